from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlmodel import col, select

from backend import storage
from backend.api.deps import CurrentOwner, InputIndex, ResourceId, SessionDep, SettingsDep, owned_or_404
from backend.api.errors import MALFORMED_BODY, unprocessable
from backend.crud import lock_owner
from backend.datasets import builtin_datasets, builtin_names, dataset_public, ingest_upload
from backend.images import image_png, load_cached
from backend.models import Dataset, DatasetPublic, DatasetsPublic, Job, Message

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("", response_model=DatasetsPublic)
async def read_datasets(session: SessionDep, owner: CurrentOwner) -> DatasetsPublic:
    """Built-ins (no upload needed) first, then the owner's uploads."""
    data = await run_in_threadpool(builtin_datasets)
    uploads = session.exec(select(Dataset).where(Dataset.owner_id == owner.id).order_by(col(Dataset.id))).all()
    data += [dataset_public(row) for row in uploads]
    return DatasetsPublic(data=data, count=len(data))


@router.post("", response_model=DatasetPublic, status_code=status.HTTP_201_CREATED,
             responses={400: MALFORMED_BODY, 413: {"model": Message},
                        422: unprocessable("not an .npz with x and y nor a zip of class folders, or over a limit")})
async def create_dataset(
    session: SessionDep, owner: CurrentOwner, settings: SettingsDep,
    file: Annotated[UploadFile, File(description=".npz with arrays x and y, or a .zip of class-named image folders")],
    name: Annotated[str, Form(min_length=1, max_length=255)],
) -> DatasetPublic:
    filename = file.filename or "upload"
    try:
        suffix = storage.safe_suffix(filename)
    except ValueError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    upload = storage.new_path(settings.STORAGE_DIR, "uploads", owner.id, suffix)
    dest = storage.new_path(settings.STORAGE_DIR, "datasets", owner.id, ".npz")
    try:
        await run_in_threadpool(storage.save_stream, file.file, upload, settings.MAX_UPLOAD_BYTES)
        data = await run_in_threadpool(ingest_upload, upload, filename, dest, 4 * settings.MAX_UPLOAD_BYTES)
    except storage.TooLarge as error:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error)) from None
    except (ValueError, OSError) as error:  # LimitExceeded (a ValueError) names the limit
        storage.remove(dest)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{filename}: {error}") from None
    except BaseException:
        storage.remove(dest)
        raise
    finally:
        storage.remove(upload)
    row = Dataset(owner_id=owner.id, name=name, path=str(dest), size=data.size, input_shape=data.input_shape,
                  num_classes=data.num_classes, class_names=data.class_names)
    session.add(row)
    session.commit()
    session.refresh(row)
    return dataset_public(row)


def owned_dataset(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> Dataset:
    return owned_or_404(session, owner, Dataset, id, "dataset")


@router.get("/{id}", response_model=DatasetPublic, responses={404: {"model": Message}})
def read_dataset(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> DatasetPublic:
    return dataset_public(owned_dataset(session, owner, id))


@router.delete("/{id}", response_model=Message, responses={404: {"model": Message}, 409: {"model": Message}})
def delete_dataset(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> Message:
    # first: a job being created with it, or a second delete of it, waits its turn, then finds it gone
    lock_owner(session=session, owner=owner)
    row = owned_dataset(session, owner, id)
    if session.exec(select(Job.id).where(Job.dataset == str(id), Job.owner_id == owner.id)).first() is not None:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"dataset {id} has certification jobs; it is kept for them")
    session.delete(row)
    session.commit()
    storage.remove(row.path)
    return Message(detail=f"dataset {id} deleted")


PNG_RESPONSES = {200: {"content": {"image/png": {}}, "description": "the input as a PNG, small images scaled up"},
                 404: {"model": Message}}


def png_response(found: Dataset | str, split: str, index: int) -> Response:
    """Input ``index`` of a built-in's split or an upload as a PNG; 404 outside the dataset or split."""
    try:
        png = image_png(load_cached(found, split), index)
    except (IndexError, ValueError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{id}/images/{index}", response_model=None, response_class=Response, responses=PNG_RESPONSES)
def read_dataset_image(session: SessionDep, owner: CurrentOwner, id: Annotated[str, PathParam(max_length=255)],
                       index: InputIndex,
                       split: str = Query("test", description="built-ins only; an upload has one split")
                       ) -> Response:
    """Input ``index`` of a dataset (a built-in's name or an upload's id) as a PNG thumbnail."""
    if id in builtin_names():
        return png_response(id, split, index)
    if not id.isdigit():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {id} not found")
    return png_response(owned_or_404(session, owner, Dataset, int(id), "dataset"), split, index)
