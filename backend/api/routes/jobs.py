from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from sqlmodel import Session
from sse_starlette import EventSourceResponse

from backend import exports, jobs
from backend.api.deps import (
    CurrentOwner,
    InputIndex,
    Offset,
    PageSize,
    QueueDep,
    ResourceId,
    SessionDep,
    SettingsDep,
    owned_or_404,
)
from backend.api.errors import MALFORMED_BODY, unprocessable
from backend.api.routes.datasets import PNG_RESPONSES, png_response
from backend.datasets import find_dataset
from backend.db import get_engine
from backend.models import Job, JobCreate, JobPublic, JobsPublic, Message, Owner
from backend.queue import ShardTask, try_enqueue
from backend.sandbox.process import SandboxError, SandboxUnavailable

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = structlog.get_logger("kavach.api")


def owned_job(session: Session, owner: Owner, id: int) -> Job:
    return owned_or_404(session, owner, Job, id, "job")


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED,
             responses={400: MALFORMED_BODY, 404: {"model": Message},
                        429: {"model": Message, "description": "over the owner's quota"},
                        422: unprocessable("subset, shapes or labels do not fit, or bf16, compile or freeze "
                                           "asked of a model format that cannot take it")})
async def create_job(session: SessionDep, owner: CurrentOwner, settings: SettingsDep, queue: QueueDep,
                     job_in: JobCreate) -> JobPublic:
    """Store the job, split it into shards of SHARD_SIZE inputs and enqueue one task per shard."""
    try:
        job, shards = await run_in_threadpool(jobs.create_job, session=session, owner=owner, job_in=job_in,
                                              settings=settings)
    except jobs.NotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except jobs.OverQuota as error:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(error)) from None
    except jobs.Invalid as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    # the job is stored: if Redis does not answer now, a worker's reconciler enqueues its shards later
    if not await try_enqueue(queue, [ShardTask(job_id=job.id, shard_id=shard.id) for shard in shards]):
        log.warning("redis did not take the job's shards; the reconciler will", job=job.id)
    return jobs.job_public(session=session, job=job)


@router.get("", response_model=JobsPublic)
def read_jobs(session: SessionDep, owner: CurrentOwner, offset: Offset = 0, limit: PageSize = 100) -> JobsPublic:
    rows, count = jobs.list_jobs(session=session, owner=owner, offset=offset, limit=limit)
    return JobsPublic(data=[jobs.job_public(session=session, job=job) for job in rows], count=count)


@router.get("/{id}", response_model=JobPublic, responses={404: {"model": Message}})
def read_job(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> JobPublic:
    return jobs.job_public(session=session, job=owned_job(session, owner, id))


@router.post("/{id}/cancel", response_model=JobPublic, responses={404: {"model": Message}})
def cancel_job(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> JobPublic:
    """Stop the job: queued shards are skipped, running ones stop after the batch in flight."""
    job = jobs.cancel_job(session=session, job=owned_job(session, owner, id))
    return jobs.job_public(session=session, job=job)


@router.get("/{id}/events", responses={200: {"content": {"text/event-stream": {}},
                                             "description": "`progress` events carrying JobPublic"},
                                       404: {"model": Message}})
async def job_events(request: Request, session: SessionDep, owner: CurrentOwner, settings: SettingsDep,
                     id: ResourceId) -> EventSourceResponse:
    """Server-sent events: the job (with its progress) every PROGRESS_INTERVAL_SECONDS until it finishes."""
    owned_job(session, owner, id)

    def snapshot() -> JobPublic:
        with Session(get_engine()) as fresh:
            return jobs.job_public(session=fresh, job=fresh.get(Job, id))

    async def stream() -> AsyncIterator[dict]:
        while not await request.is_disconnected():
            job = await run_in_threadpool(snapshot)
            yield {"event": "progress", "data": job.model_dump_json()}
            if job.state.finished:
                return
            await asyncio.sleep(settings.PROGRESS_INTERVAL_SECONDS)

    return EventSourceResponse(stream())


@router.get("/{id}/images/{index}", response_model=None, response_class=Response, responses=PNG_RESPONSES)
def read_job_image(session: SessionDep, owner: CurrentOwner, id: ResourceId, index: InputIndex) -> Response:
    """Input ``index`` of the job's dataset split (a results row's ``index``) as a PNG thumbnail."""
    job = owned_job(session, owner, id)
    found = find_dataset(session=session, ref=job.dataset, owner=owner)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {job.dataset!r} is gone")
    return png_response(found, job.split, index)


@router.get("/{id}/smoothed-model", response_model=None, response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "Cohen's PREDICT over the job's model with its noise, n and alpha: a "
                                            "torch.export program (.pt2) or TorchScript (.pt); forward(x) returns "
                                            "the class or -1 to abstain"},
                       404: {"model": Message}, 409: {"model": Message, "description": "the job is not done, or "
                                                      "its noise is not Gaussian"},
                       422: unprocessable("the model cannot be compiled into a program"),
                       503: {"model": Message, "description": "this server cannot sandbox model files"}})
def download_smoothed_model(session: SessionDep, owner: CurrentOwner, settings: SettingsDep, id: ResourceId) -> FileResponse:
    """The certified smoothed classifier, what was certified is what ships: compiled once per job in a sandbox."""
    job = owned_job(session, owner, id)
    try:
        path, fmt = exports.smoothed_program(session=session, job=job, settings=settings)
    except exports.NotExportable as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except SandboxUnavailable as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None
    except SandboxError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"kavach-job{job.id}-smoothed{exports.SUFFIXES[fmt]}")
