from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import func, or_
from sqlmodel import col, select

from backend import storage
from backend.api.deps import CurrentOwner, Offset, PageSize, ResourceId, SessionDep, SettingsDep, owned_or_404
from backend.api.errors import MALFORMED_BODY, unprocessable
from backend.crud import create_model_row, lock_owner
from backend.modelfiles import ModelRejected, SandboxUnavailable, store_checked
from backend.models import Job, Message, Model, ModelCreate, ModelPublic, ModelsPublic

router = APIRouter(prefix="/models", tags=["models"])


def parse_metadata(metadata: str) -> ModelCreate:
    try:
        return ModelCreate.model_validate_json(metadata)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from None


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED,
             responses={400: MALFORMED_BODY, 413: {"model": Message},
                        422: unprocessable("the file does not load or run as declared"),
                        503: {"model": Message, "description": "this server cannot sandbox model files"}})
async def create_model(
    session: SessionDep, owner: CurrentOwner, settings: SettingsDep,
    file: Annotated[UploadFile, File(description="TorchScript, .pt2, safetensors or weights-only state dict")],
    metadata: Annotated[str, Form(description="the model's ModelCreate fields as JSON")],
) -> Model:
    """Register a model: the file is loaded and run once on a zero input of the declared shape, in a
    confined model process with memory, CPU-time and wall-clock limits."""
    meta = parse_metadata(metadata)
    try:
        suffix = storage.safe_suffix(file.filename or "model")
    except ValueError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    path = storage.new_path(settings.STORAGE_DIR, "models", owner.id, suffix)
    try:
        size, fmt = await run_in_threadpool(store_checked, file.file, path, meta, settings.MAX_UPLOAD_BYTES,
                                            file.filename, settings)
    except storage.TooLarge as error:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error)) from None
    except ModelRejected as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    except SandboxUnavailable as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None
    return create_model_row(session=session, owner=owner, meta=meta, path=path, size=size, fmt=fmt)


@router.get("", response_model=ModelsPublic)
def read_models(session: SessionDep, owner: CurrentOwner, offset: Offset = 0, limit: PageSize = 100) -> ModelsPublic:
    where = Model.owner_id == owner.id
    count = session.exec(select(func.count(col(Model.id))).where(where)).one()
    models = session.exec(select(Model).where(where).order_by(col(Model.id)).offset(offset).limit(limit)).all()
    return ModelsPublic(data=[ModelPublic.model_validate(m) for m in models], count=count)


def owned_model(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> Model:
    return owned_or_404(session, owner, Model, id, "model")


@router.get("/{id}", response_model=ModelPublic, responses={404: {"model": Message}})
def read_model(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> Model:
    return owned_model(session, owner, id)


@router.delete("/{id}", response_model=Message, responses={404: {"model": Message}, 409: {"model": Message}})
def delete_model(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> Message:
    # first: a job being created with it, or a second delete of it, waits its turn, then finds it gone
    lock_owner(session=session, owner=owner)
    model = owned_model(session, owner, id)
    uses = or_(col(Job.model_id) == id, Job.config["denoiser_id"].as_integer() == id)
    if session.exec(select(Job.id).where(Job.owner_id == owner.id, uses)).first() is not None:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"model {id} has certification jobs (as their classifier or "
                                                      "their denoiser); it is kept for them")
    session.delete(model)
    session.commit()
    storage.remove(model.path)
    return Message(detail=f"model {id} deleted")
