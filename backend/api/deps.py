"""Typed dependencies: settings, a database session, the queue, and the owner behind the bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from backend.core.config import Settings, get_settings
from backend.crud import get_owned, token_refusal, token_row
from backend.db import get_engine
from backend.models import ID_MAX, LIMITS, Owner


def get_db() -> Iterator[Session]:
    with Session(get_engine()) as session:
        yield session


def get_queue(request: Request) -> ArqRedis:
    return request.app.state.queue


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[ArqRedis, Depends(get_queue)]
bearer = HTTPBearer(auto_error=False, description="an API token from `kavach token create NAME`")


def get_current_owner(session: SessionDep,
                      credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Owner:
    row = token_row(session=session, token=credentials.credentials) if credentials else None
    refusal = token_refusal(row) if row is not None else None
    owner = session.get(Owner, row.owner_id) if row is not None and refusal is None else None
    if owner is None:
        detail = (f"API token {refusal}: ask for a new one (kavach token create NAME)" if refusal else
                  "missing or unknown API token: send Authorization: Bearer <token>")
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=detail,
                            headers={"WWW-Authenticate": "Bearer"})
    return owner


CurrentOwner = Annotated[Owner, Depends(get_current_owner)]


def owned_or_404(session: Session, owner: Owner, table: type, id: int, what: str):
    """The owner's row of ``table``; another owner's row gets the same 404 as a missing one."""
    row = get_owned(session=session, table=table, id=id, owner=owner)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {id} not found")
    return row


# every number in a path or query has a ceiling: ids and offsets fit the databases' integer columns
ResourceId = Annotated[int, Path(ge=1, le=ID_MAX)]
InputIndex = Annotated[int, Path(ge=0, le=ID_MAX, description="position in the dataset split")]
Offset = Annotated[int, Query(ge=0, le=ID_MAX)]
PageSize = Annotated[int, Query(ge=1, le=LIMITS.MAX_PAGE_SIZE, description="at most MAX_PAGE_SIZE")]
