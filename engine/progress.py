"""The progress bar every long command shows: label, bar, done/total, elapsed, remaining, and a status text."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(label: str = "{task.description}", status: str = "{task.fields[status]}",
                 console: Console | None = None) -> Progress:
    """A rich ``Progress``; tasks added to it need a ``status`` field when ``status`` names one."""
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn(status))
    return Progress(*columns, console=console)
