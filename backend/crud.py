"""Plain keyword-only database functions shared by the API, the worker and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import update
from sqlmodel import Session, SQLModel, col, select

from backend.models import ApiToken, Model, ModelCreate, ModelFormat, Owner, utcnow
from backend.security import hash_token, new_token

Owned = TypeVar("Owned", bound=SQLModel)


def get_or_create_owner(*, session: Session, name: str) -> Owner:
    owner = session.exec(select(Owner).where(Owner.name == name)).first()
    if owner is None:
        owner = Owner(name=name)
        session.add(owner)
        session.commit()
        session.refresh(owner)
    return owner


def create_token(*, session: Session, owner_name: str, token_name: str = "cli",
                 expires_at: datetime | None = None) -> str:
    """A new API token for ``owner_name`` (created if new), refused from ``expires_at`` on when given; the clear
    token is returned once, never stored."""
    owner = get_or_create_owner(session=session, name=owner_name)
    token = new_token()
    session.add(ApiToken(owner_id=owner.id, name=token_name, token_hash=hash_token(token),
                         expires_at=_aware(expires_at)))
    session.commit()
    return token


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every one this service stores is UTC."""
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def token_refusal(row: ApiToken, now: datetime | None = None) -> str | None:
    """Why ``row`` may not be used now ("revoked", "expired"), or None when it may."""
    now = now or utcnow()
    if row.revoked_at is not None:
        return "revoked"
    expires = _aware(row.expires_at)
    if expires is not None and expires <= now:
        return "expired"
    return None


def token_row(*, session: Session, token: str) -> ApiToken | None:
    """The row of a clear token, whatever its state."""
    return session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()


def owner_for_token(*, session: Session, token: str) -> Owner | None:
    """The owner of a token that is known, not revoked and not expired; None otherwise."""
    row = token_row(session=session, token=token)
    return None if row is None or token_refusal(row) else session.get(Owner, row.owner_id)


def list_tokens(*, session: Session, owner_name: str) -> list[ApiToken]:
    """Every token of ``owner_name``, revoked and expired ones included, oldest first (none for an unknown owner)."""
    return list(session.exec(select(ApiToken).join(Owner, col(Owner.id) == col(ApiToken.owner_id))
                             .where(Owner.name == owner_name).order_by(col(ApiToken.id))).all())


def revoke_token(*, session: Session, token: int | str) -> ApiToken | None:
    """Revoke one token, named by its id or by the clear token; the row, or None when there is no such token.

    Revoking a revoked token keeps its first revocation time.
    """
    row = session.get(ApiToken, token) if isinstance(token, int) else token_row(session=session, token=token)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def revoke_owner_tokens(*, session: Session, owner_name: str) -> int:
    """Revoke every token of ``owner_name`` not revoked yet; how many that was."""
    now = utcnow()
    rows = [row for row in list_tokens(session=session, owner_name=owner_name) if row.revoked_at is None]
    for row in rows:
        row.revoked_at = now
        session.add(row)
    session.commit()
    return len(rows)


def lock_owner(*, session: Session, owner: Owner) -> None:
    """Hold the owner's row lock until the caller commits or rolls back, so that creating a job (its quota
    check, its references) and deleting a model or dataset of the same owner take turns. A no-op UPDATE
    locks the row on PostgreSQL and takes the write lock on SQLite, which has no SELECT ... FOR UPDATE."""
    session.execute(update(Owner).where(col(Owner.id) == owner.id).values(name=Owner.name))


def get_owned(*, session: Session, table: type[Owned], id: int, owner: Owner) -> Owned | None:
    """The row when it exists and belongs to ``owner``; another owner's row is indistinguishable from none."""
    row = session.get(table, id)
    return row if row is not None and row.owner_id == owner.id else None


def create_model_row(*, session: Session, owner: Owner, meta: ModelCreate, path: Path, size: int, fmt: str) -> Model:
    """The Model row of a stored, checked file (see ``backend.modelfiles.store_checked``)."""
    model = Model.model_validate(meta, update={"owner_id": owner.id, "path": str(path), "size_bytes": size,
                                               "format": ModelFormat(fmt)})
    session.add(model)
    session.commit()
    session.refresh(model)
    return model
