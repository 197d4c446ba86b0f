"""Plain keyword-only database functions shared by the API, the worker and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from sqlmodel import Session, SQLModel, select

from backend.models import ApiToken, Model, ModelCreate, ModelFormat, Owner
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


def create_token(*, session: Session, owner_name: str, token_name: str = "cli") -> str:
    """A new API token for ``owner_name`` (created if new); the clear token is returned once, never stored."""
    owner = get_or_create_owner(session=session, name=owner_name)
    token = new_token()
    session.add(ApiToken(owner_id=owner.id, name=token_name, token_hash=hash_token(token)))
    session.commit()
    return token


def owner_for_token(*, session: Session, token: str) -> Owner | None:
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    return None if row is None else session.get(Owner, row.owner_id)


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
