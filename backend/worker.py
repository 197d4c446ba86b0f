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
from backend.modelfiles import load_registered
from backend.models import Job, JobConfig, JobState, Model, Owner, ResultRow, Shard, ShardState, utcnow
from backend.queue import SHARD_TASK, ShardTask, redis_settings
from engine.data import ImageDataset
from engine.denoise import denoised_classifier
from engine.freeze import freeze_model
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
    """Per-process caches: loaded models and datasets outlive one shard."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.DEVICE or ("cuda" if torch.cuda.is_available() else "cpu")
        self.models: OrderedDict[Any, torch.nn.Module] = OrderedDict()
        # compiled jobs' base classifiers (torch.compile wrappers, frozen graphs), each over copies of its own
        self.compiled: OrderedDict[Any, torch.nn.Module] = OrderedDict()
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

    def load(self, row: Model) -> torch.nn.Module:
        return load_registered(row.path, format=row.format.value if row.format else None, arch=row.arch,
                               num_classes=row.num_classes, input_shape=row.input_shape, input_max=row.input_max,
                               mean=row.mean, std=row.std, device=self.device)

    def model(self, row: Model, key: Any = None) -> torch.nn.Module:
        return self._remember(self.models, row.id if key is None else key, lambda: self.load(row))

    def base_classifier(self, session: Session, job: Job, config: JobConfig) -> torch.nn.Module:
        """The job's model, or classifier(denoiser(x)) with the denoiser's noise level fixed to the job's sigma;
        for a compiled job, that base classifier wrapped by torch.compile, or frozen into one graph."""
        # a bf16 job converts its copies in place, so they are cached apart from the fp32 ones
        precision = "bf16" if config.bf16 else "fp32"
        if config.compile or config.freeze:
            # the wrapper is kept, so later shards of compiled jobs reuse the graphs it compiled (that is where
            # compiling pays); it owns fresh copies, so an eager job never runs or converts a compiled job's model
            sigma = None if config.denoiser_id is None else config.sigma
            key = ("freeze" if config.freeze else "compile", job.model_id, config.denoiser_id, sigma, precision)
            return self._remember(self.compiled, key, lambda: self._compile(session, job, config, key))
        net = self.model(session.get(Model, job.model_id), key=(job.model_id, precision))
        if config.denoiser_id is None:
            return net
        # one copy per sigma: shards of jobs with other sigmas may share this process
        denoiser = self.model(session.get(Model, config.denoiser_id),
                              key=(config.denoiser_id, config.sigma, precision))
        return denoised_classifier(net, denoiser, config.sigma)

    def _compile(self, session: Session, job: Job, config: JobConfig, key: Any) -> torch.nn.Module:
        """torch.compile of the base classifier (the composed one for a denoised job), on fresh copies; or,
        for ``config.freeze``, those copies in the job's precision frozen into one TorchScript graph."""
        net = self.load(session.get(Model, job.model_id))
        if config.denoiser_id is not None:
            net = denoised_classifier(net, self.load(session.get(Model, config.denoiser_id)), config.sigma)
        if config.freeze:
            log.info("base classifier frozen", job=job.id, key=key)
            return freeze_model(net.to(torch.bfloat16) if config.bf16 else net)
        log.info("base classifier wrapped in torch.compile", job=job.id, key=key)
        # the graphs themselves are compiled by the first batch of each size, as SmoothedClassifier compiles
        return torch.compile(net.eval(), dynamic=False)

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
        net = resources.base_classifier(session, job, config)
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
    eager = not isinstance(net, torch.jit.ScriptModule) and resources.device != "cpu"
    # a compiled job's net is the cached torch.compile wrapper: SmoothedClassifier keeps it (converting the
    # module inside it on its first shard) and feeds it batches of one shape per size
    smoothed = SmoothedClassifier(net, classes, noise, channels_last=eager,
                                  dtype=torch.bfloat16 if config.bf16 else None, compile=config.compile,
                                  freeze=config.freeze)
    return ShardWork(shard, config, smoothed, data, sample_schedule(config),
                     [i for i in shard.indices if i not in stored])


def sample_schedule(c: JobConfig) -> SampleSchedule | None:
    """The config's sample-size schedule, built as ``kavach certify`` builds it; None keeps n fixed."""
    return make_schedule(c.sigma, c.n, c.alpha, c.batch_size, iss_delta=c.iss_delta, iss_mode=c.iss_mode,
                         sequential_delta=c.sequential_delta)


def stop_if_finished(work: ShardWork) -> None:
    """Raise ShardStopped once the job was cancelled (or finished elsewhere)."""
    with Session(get_engine()) as session:
        if session.get(Job, work.shard.job_id).state.finished:
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
    except ShardStopped:
        log.info("shard stopped", job=shard_task.job_id, shard=shard_task.shard_id, certified=done)
        return {"certified": done, "stopped": True}
    except ValueError as error:  # the job's settings cannot work (from the engine's checks): do not retry
        await asyncio.to_thread(finish_shard, shard_task.shard_id, ShardState.failed, str(error))
        log.warning("shard failed", job=shard_task.job_id, shard=shard_task.shard_id, error=str(error))
        return {"certified": done, "error": str(error)}
    except Exception as error:
        if ctx["job_try"] >= settings.SHARD_MAX_TRIES:
            await asyncio.to_thread(finish_shard, shard_task.shard_id, ShardState.failed, repr(error))
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


def worker_settings(settings: Settings) -> dict[str, Any]:
    if settings.REDIS_URL is None:
        raise SystemExit("REDIS_URL is not set: point the worker at the API's Redis (make run prints it)")
    shard: Function = func(certify_shard, name=SHARD_TASK, max_tries=settings.SHARD_MAX_TRIES,
                           timeout=7 * 24 * 3600)  # a shard's length is bounded by its inputs, not a clock
    return {"functions": [shard], "on_startup": startup, "redis_settings": redis_settings(settings.REDIS_URL),
            "queue_name": QUEUE_NAME, "max_jobs": settings.WORKER_MAX_JOBS, "poll_delay": settings.WORKER_POLL_SECONDS,
            "keep_result": 3600, "handle_signals": True}


class WorkerSettings:
    """For ``arq backend.worker.WorkerSettings``; ``kavach worker`` does the same."""

    functions: ClassVar = [func(certify_shard, name=SHARD_TASK, timeout=7 * 24 * 3600)]
    on_startup = startup
    queue_name = QUEUE_NAME
    redis_settings = redis_settings(get_settings().REDIS_URL) if get_settings().REDIS_URL else None


def run_worker() -> None:
    settings = get_settings()
    structlog.get_logger("kavach.worker").info("worker starting", redis=(settings.REDIS_URL or "").split("@")[-1])
    Worker(**worker_settings(settings)).run()


if __name__ == "__main__":
    run_worker()
