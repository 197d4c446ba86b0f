"""The ``kavach`` command: the engine's commands, plus the service's (tokens, worker) and the client's."""

from __future__ import annotations

from backend.cli import token_app, worker
from engine.cli import app
from kavach.submit import submit

app.add_typer(token_app, name="token")
app.command()(worker)
app.command()(submit)

if __name__ == "__main__":
    app()
