"""The service's commands of ``kavach``: API tokens and the certification worker.

They live beside the service so that ``engine/`` never imports ``backend/``; ``kavach.cli`` mounts them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


token_app = typer.Typer(help="API tokens for the service (needs the web extras: pip install -e '.[web]').",
                        no_args_is_help=True)


DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``3600s`` as a timedelta (more than zero)."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhms])\s*", text.lower())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"a duration is a positive whole number and a unit (30d, 12h, 90m, 3600s); got {text!r}")
    try:
        return timedelta(seconds=int(match[1]) * DURATION_UNITS[match[2]])
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def open_token_db():
    """A session on the service's migrated database (DATABASE_URL)."""
    from sqlmodel import Session  # lazy: the engine stays importable without the web packages

    from backend.db import get_engine
    from backend.migrate import upgrade_database

    upgrade_database()
    return Session(get_engine())


def when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="the owner; created if new")],
    label: Annotated[str, typer.Option(help="what this token is for")] = "cli",
    expires_in: Annotated[str | None, typer.Option(
        help="refuse the token after this long: 30d, 12h, 90m or 3600s (default: never)")] = None,
) -> None:
    """Make an API token for owner NAME and print it once (only its hash is stored)."""
    from backend.crud import create_token

    try:
        expires_at = None if expires_in is None else datetime.now(UTC) + parse_duration(expires_in)
    except (ValueError, OverflowError) as error:
        raise fail(f"--expires-in: {error}") from None
    with open_token_db() as session:
        token = create_token(session=session, owner_name=name, token_name=label, expires_at=expires_at)
    if expires_at is not None:
        typer.echo(f"expires {when(expires_at)}", err=True)
    typer.echo(token)


@token_app.command("list")
def token_list(name: Annotated[str, typer.Argument(help="the owner")]) -> None:
    """Owner NAME's tokens: id, label, created, expires, revoked and state (never the token itself)."""
    from backend.crud import list_tokens, token_refusal

    with open_token_db() as session:
        rows = list_tokens(session=session, owner_name=name)
    if not rows:
        typer.echo(f"owner {name!r} has no tokens", err=True)
        return
    typer.echo("id\tlabel\tcreated\texpires\trevoked\tstate")
    for row in rows:
        state = token_refusal(row) or "active"
        typer.echo(f"{row.id}\t{row.name}\t{when(row.created_at)}\t{when(row.expires_at)}\t{when(row.revoked_at)}"
                   f"\t{state}")


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str | None, typer.Argument(
        help="the token's id (kavach token list NAME), or the token itself", metavar="TOKEN_ID",
        show_default=False)] = None,
    owner: Annotated[str | None, typer.Option(help="with --all: the owner whose tokens to revoke")] = None,
    all_tokens: Annotated[bool, typer.Option("--all", help="revoke every token of --owner")] = False,
) -> None:
    """Revoke one token at once (TOKEN_ID), or every token of an owner (--owner NAME --all)."""
    from backend.crud import revoke_owner_tokens, revoke_token
    from backend.models import Owner

    if (token is None) == (owner is None) or (owner is not None) != all_tokens:
        raise fail("name one token (kavach token revoke TOKEN_ID) or one owner's all (--owner NAME --all)")
    with open_token_db() as session:
        if owner is not None:
            count = revoke_owner_tokens(session=session, owner_name=owner)
            typer.echo(f"revoked {count} token{'s' * (count != 1)} of owner {owner!r}")
            return
        by_id = token.isascii() and token.isdigit()
        row = revoke_token(session=session, token=int(token) if by_id and len(token) < 19 else token)
        if row is None:
            raise fail(f"no token with id {token}" if by_id else "no such token")
        holder = session.get(Owner, row.owner_id)
        typer.echo(f"token {row.id} ({row.name}) of owner {holder.name!r} revoked {when(row.revoked_at)}")


def worker() -> None:
    """Run one certification worker against REDIS_URL and DATABASE_URL (the service's queue)."""
    from backend.worker import run_worker  # lazy: `kavach --help` stays quick

    run_worker()
