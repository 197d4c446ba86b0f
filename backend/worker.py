"""The arq worker: one task per shard, certifying input by input and storing each row as it is done.

A shard resumes after its stored rows, so a retried shard (its worker was killed, its lease expired)
loses at most the input that was in flight, and the (job_id, index) unique constraint keeps a row
from ever being stored twice. Cancel is read from the job's state between inputs.

With ``pack > 1`` the shard's pending inputs go in groups of ``pack`` through ``certify_many`` and each
group's rows are stored in one transaction: groups are stored whole and in order, so a resumed shard's
pending inputs start at a group boundary and regroup exactly as before (the same seeds, the same rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
import torch
from arq import Retry
from arq.worker import Function, Worker, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from backend.core.config import Settings, get_settings
from backend.datasets import find_dataset, load_for_job
from backend.db import get_engine
from backend.keys import ARQ_IN_PROGRESS_PREFIX, QUEUE_NAME
from backend.modelfiles import serve_registered
from backend.models import (
    Job,
    JobConfig,
    JobState,
    Model,
    ModelFormat,
    Owner,
    ResultRow,
    Shard,
    ShardState,
    utcnow,
)
from backend.queue import SHARD_TASK, ShardTask, redis_settings
from backend.sandbox.process import (
    ModelFailed,
    ModelProcess,
    ModelStopped,
    RemoteVoter,
    SandboxUnavailable,
    VotesCancelled,
)
from engine.data import ImageDataset
from engine.noise import make_noise
from engine.schedule import SampleSchedule, make_schedule
from engine.smooth import CertifyResult, SmoothedClassifier

log = structlog.get_logger("kavach.worker")
MODEL_CACHE_SIZE = 4


class ShardStopped(Exception):
    """The job was cancelled or finished elsewhere; the shard stops without error."""


@dataclass
class ShardWork:
    shard: Shard
    config: JobConfig
    smoothed: SmoothedClassifier
    data: ImageDataset
    schedule: SampleSchedule | None
    todo: list[int]


class Resources:
    """Per-process caches: model processes and datasets outlive one shard."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.DEVICE or ("cuda" if torch.cuda.is_available() else "cpu")
        # one confined model process per (model, denoiser and its sigma, precision, graph): never shared by
        # jobs that convert the model differently, and reused by the next shards of the same kind
        self.processes: OrderedDict[tuple, ModelProcess] = OrderedDict()
        self.process_slots = max(settings.SANDBOX_CACHE_SIZE, settings.WORKER_MAX_JOBS)
        self.datasets: OrderedDict[tuple[int, str, str], ImageDataset] = OrderedDict()
        self.lock = threading.RLock()  # guards the caches

    def _remember(self, cache: OrderedDict, key: Any, make: Any) -> Any:
        with self.lock:  # shards begin in threads (WORKER_MAX_JOBS > 1): one copy per key
            if key not in cache:
                cache[key] = make()
                while len(cache) > MODEL_CACHE_SIZE:
                    cache.popitem(last=False)
            cache.move_to_end(key)
            return cache[key]

    @staticmethod
    def process_key(job: Job, config: JobConfig) -> tuple:
        graph = "freeze" if config.freeze else "compile" if config.compile else "eager"
        sigma = None if config.denoiser_id is None else config.sigma
        return (job.model_id, config.denoiser_id, sigma, "bf16" if config.bf16 else "fp32", graph)

    def model_process(self, session: Session, job: Job, config: JobConfig) -> ModelProcess:
        """The job's base classifier in a ready model process (the model, or classifier(denoiser(x)) with the
        denoiser's noise level fixed to the job's sigma), converted as the job asks."""
        key = self.process_key(job, config)
        with self.lock:
            process = self.processes.get(key)
            if process is not None and process.alive:
                self.processes.move_to_end(key)
                return process
            if process is not None:  # died (a limit stopped it): start afresh
                process.close()
                del self.processes[key]
            model = session.get(Model, job.model_id)
            denoiser = None if config.denoiser_id is None else session.get(Model, config.denoiser_id)
            options = {"num_classes": model.num_classes, "sigma": config.sigma, "bf16": config.bf16,
                       "compile": config.compile, "freeze": config.freeze,
                       # NHWC pays on GPUs; a TorchScript archive keeps the layout it was saved with
                       "channels_last": self.device != "cpu" and model.format is not ModelFormat.torchscript}
            process = serve_registered(model, denoiser, settings=self.settings, device=self.device, options=options)
            log.info("model process started", job=job.id, key=key, pid=process.process.pid)
            self.processes[key] = process
            while len(self.processes) > self.process_slots:
                _, evicted = self.processes.popitem(last=False)
                evicted.close()
            return process

    def close(self) -> None:
        with self.lock:
            for process in self.processes.values():
                process.close()
            self.processes.clear()

    def dataset(self, session: Session, job: Job) -> ImageDataset:
        def load() -> ImageDataset:
            found = find_dataset(session=session, ref=job.dataset, owner=session.get(Owner, job.owner_id))
            if found is None:
                raise ValueError(f"dataset {job.dataset!r} is gone")
            return load_for_job(found, job.split)
        return self._remember(self.datasets, (job.owner_id, job.dataset, job.split), load)


def begin_shard(resources: Resources, task: ShardTask) -> ShardWork:
    with Session(get_engine()) as session:
        job, shard = session.get(Job, task.job_id), session.get(Shard, task.shard_id)
        if job is None or shard is None or job.state.finished or shard.state is not ShardState.queued \
                and shard.state is not ShardState.running:
            raise ShardStopped
        stored = set(session.exec(select(ResultRow.index).where(ResultRow.job_id == job.id,
                                                                col(ResultRow.index).in_(shard.indices))).all())
        config = JobConfig(**job.config)
        process = resources.model_process(session, job, config)
        data = resources.dataset(session, job)
        classes = session.get(Model, job.model_id).num_classes
        now = utcnow()
        shard.state, shard.attempts = ShardState.running, shard.attempts + 1
        shard.started_at = shard.started_at or now
        if job.state is JobState.queued:
            job.state = JobState.running
        job.started_at = job.started_at or now
        session.add_all([shard, job])
        session.commit()
        session.refresh(shard)
    d = data.x[0].numel()
    noise = make_noise(config.noise.value, config.sigma, k=config.k, d=d if config.k else None)
    # the certificate's arithmetic stays here; the model process only answers votes, and is told to stop
    # between batches once the job is cancelled
    voter = RemoteVoter(process, should_stop=lambda: job_finished(task.job_id))
    smoothed = SmoothedClassifier(voter, classes, noise)
    return ShardWork(shard, config, smoothed, data, sample_schedule(config),
                     [i for i in shard.indices if i not in stored])


def job_finished(job_id: int) -> bool:
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        return job is None or job.state.finished


def sample_schedule(c: JobConfig) -> SampleSchedule | None:
    """The config's sample-size schedule, built as ``kavach certify`` builds it; None keeps n fixed."""
    return make_schedule(c.sigma, c.n, c.alpha, c.batch_size, iss_delta=c.iss_delta, iss_mode=c.iss_mode,
                         sequential_delta=c.sequential_delta)


def stop_if_finished(work: ShardWork) -> None:
    """Raise ShardStopped once the job was cancelled (or finished elsewhere)."""
    if job_finished(work.shard.job_id):
        raise ShardStopped


def result_row(work: ShardWork, index: int, result: CertifyResult) -> ResultRow:
    return ResultRow(job_id=work.shard.job_id, shard_id=work.shard.id, index=index, label=int(work.data.y[index]),
                     prediction=result.prediction, radius=result.radius, p_lower=result.p_lower,
                     p_upper=result.p_upper, q_lower=result.q_lower, q_upper=result.q_upper, samples=result.samples,
                     seconds=result.seconds)


def store_rows(rows: list[ResultRow]) -> None:
    """Store the rows in one transaction; rows another attempt of this shard stored first are skipped."""
    with Session(get_engine()) as session:
        session.add_all(rows)
        try:
            session.commit()
            return
        except IntegrityError:  # another attempt of this shard stored (some of) them first
            session.rollback()
    if len(rows) > 1:  # keep the ones it did not store; fresh copies, as the failed flush may have set ids
        for row in rows:
            store_rows([ResultRow(**row.model_dump(exclude={"id"}))])


def certify_input(work: ShardWork, index: int) -> None:
    """Certify one input and store its row at once; stop if the job was cancelled meanwhile."""
    c = work.config
    stop_if_finished(work)
    result = work.smoothed.certify(work.data.x[index], c.n0, c.n, c.alpha, c.batch_size, method=c.method.value,
                                   schedule=work.schedule, q_sigma=c.q_sigma, q_threshold=c.q_threshold,
                                   seed=None if c.seed is None else c.seed + index)
    store_rows([result_row(work, index, result)])


def certify_group(work: ShardWork, group: list[int]) -> None:
    """Certify a group of inputs together (their noisy copies share batches), as ``kavach certify --pack``
    does: one seed for the group, seed + its first index; store the group's rows in one transaction."""
    c = work.config
    stop_if_finished(work)
    results = work.smoothed.certify_many(work.data.x[group], c.n0, c.n, c.alpha, c.batch_size,
                                         schedule=work.schedule, seed=None if c.seed is None else c.seed + group[0])
    store_rows([result_row(work, index, result) for index, result in zip(group, results, strict=True)])


def finish_shard(shard_id: int, state: ShardState, error: str | None = None) -> None:
    with Session(get_engine()) as session:
        shard = session.get(Shard, shard_id)
        job = session.get(Job, shard.job_id)
        if shard.state in (ShardState.queued, ShardState.running):
            shard.state = state
        shard.finished_at = utcnow()
        shard.seconds = (shard.finished_at - shard.started_at.replace(tzinfo=shard.finished_at.tzinfo)
                         ).total_seconds() if shard.started_at else None
        session.add(shard)
        if state is ShardState.failed and not job.state.finished:
            job.state, job.error, job.finished_at = JobState.failed, error, utcnow()
        session.add(job)
        session.commit()
        left = session.exec(select(Shard.id).where(Shard.job_id == job.id, Shard.state != ShardState.done)).first()
        session.refresh(job)
        if left is None and not job.state.finished:
            job.state, job.finished_at = JobState.done, utcnow()
            session.add(job)
            session.commit()


async def renew_lease(redis: Any, arq_job_id: str, lease_s: float) -> None:
    """Keep arq's in-progress marker alive while this worker runs the shard; once it lapses, arq retries."""
    key = ARQ_IN_PROGRESS_PREFIX + arq_job_id
    while True:
        await redis.pexpire(key, int(lease_s * 1000))
        await asyncio.sleep(lease_s / 3)


async def certify_shard(ctx: dict[str, Any], task: dict[str, int]) -> dict[str, Any]:
    settings: Settings = ctx["settings"]
    shard_task = ShardTask(**task)
    lease = asyncio.create_task(renew_lease(ctx["redis"], ctx["job_id"], settings.SHARD_LEASE_SECONDS))
    started, done = time.perf_counter(), 0
    try:
        work = await asyncio.to_thread(begin_shard, ctx["resources"], shard_task)
        log.info("shard started", job=shard_task.job_id, shard=shard_task.shard_id, todo=len(work.todo),
                 attempt=ctx["job_try"])
        if work.config.pack == 1:
            for index in work.todo:
                await asyncio.to_thread(certify_input, work, index)
                done += 1
        else:
            pack = work.config.pack
            for group in (work.todo[g:g + pack] for g in range(0, len(work.todo), pack)):
                await asyncio.to_thread(certify_group, work, group)
                done += len(group)
        await asyncio.to_thread(finish_shard, shard_task.shard_id, ShardState.done)
    except (ShardStopped, VotesCancelled):
        log.info("shard stopped", job=shard_task.job_id, shard=shard_task.shard_id, certified=done)
        return {"certified": done, "stopped": True}
    except (ValueError, ModelFailed, SandboxUnavailable) as error:
        # the job's settings cannot work (the engine's checks), the model raises, or this server cannot
        # sandbox models: another try would fail the same way
        await asyncio.to_thread(finish_shard, shard_task.shard_id, ShardState.failed, str(error))
        log.warning("shard failed", job=shard_task.job_id, shard=shard_task.shard_id, error=str(error))
        return {"certified": done, "error": str(error)}
    except Exception as error:  # a model process stopped by a limit or killed, the database or Redis gone...
        if ctx["job_try"] >= settings.SHARD_MAX_TRIES:
            why = str(error) if isinstance(error, ModelStopped) else repr(error)
            await asyncio.to_thread(finish_shard, shard_task.shard_id, ShardState.failed,
                                    f"shard failed after {ctx['job_try']} tries: {why}")
            raise
        log.warning("shard will be retried", job=shard_task.job_id, shard=shard_task.shard_id, error=repr(error))
        raise Retry(defer=ctx["job_try"]) from error
    finally:
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease
    log.info("shard done", job=shard_task.job_id, shard=shard_task.shard_id, certified=done,
             seconds=round(time.perf_counter() - started, 3))
    return {"certified": done}


async def startup(ctx: dict[str, Any]) -> None:
    ctx["settings"] = get_settings()
    ctx["resources"] = Resources(ctx["settings"])


async def shutdown(ctx: dict[str, Any]) -> None:
    if "resources" in ctx:
        await asyncio.to_thread(ctx["resources"].close)


def worker_settings(settings: Settings) -> dict[str, Any]:
    if settings.REDIS_URL is None:
        raise SystemExit("REDIS_URL is not set: point the worker at the API's Redis (make run prints it)")
    shard: Function = func(certify_shard, name=SHARD_TASK, max_tries=settings.SHARD_MAX_TRIES,
                           timeout=7 * 24 * 3600)  # a shard's length is bounded by its inputs, not a clock
    return {"functions": [shard], "on_startup": startup, "on_shutdown": shutdown, "redis_settings": redis_settings(settings.REDIS_URL),
            "queue_name": QUEUE_NAME, "max_jobs": settings.WORKER_MAX_JOBS, "poll_delay": settings.WORKER_POLL_SECONDS,
            "keep_result": 3600, "handle_signals": True}


class WorkerSettings:
    """For ``arq backend.worker.WorkerSettings``; ``kavach worker`` does the same."""

    functions: ClassVar = [func(certify_shard, name=SHARD_TASK, timeout=7 * 24 * 3600)]
    on_startup = startup
    on_shutdown = shutdown
    queue_name = QUEUE_NAME
    redis_settings = redis_settings(get_settings().REDIS_URL) if get_settings().REDIS_URL else None


def run_worker() -> None:
    settings = get_settings()
    structlog.get_logger("kavach.worker").info("worker starting", redis=(settings.REDIS_URL or "").split("@")[-1])
    Worker(**worker_settings(settings)).run()


if __name__ == "__main__":
    run_worker()
