"""The arq worker: one task per shard, certifying input by input and storing each row as it is done.

A shard resumes after its stored rows, so a retried shard (its worker was killed, its lease expired)
loses at most the input that was in flight. Each attempt holds the shard under a fencing token
(``backend.leases``): its rows are stored only while the token is still the shard's, and the
(job_id, index) unique constraint keeps a row from ever being stored twice. The model runs in a
sandboxed model process that stops between batches once the job is cancelled, the attempt loses its
lease, or the shard runs past its deadline (SHARD_BASE_SECONDS + SHARD_SECONDS_PER_SAMPLE per sample).
The reconciler (``backend.reconcile``) runs at start and every RECONCILE_SECONDS.

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
from signal import Signals
from typing import Any

import structlog
import torch
from arq import Retry
from arq.worker import Function, Worker, func
from redis.exceptions import RedisError
from sqlmodel import Session, col, select

from backend import leases
from backend.core.config import Settings, get_settings
from backend.datasets import find_dataset, load_for_job
from backend.db import get_engine
from backend.keys import ARQ_IN_PROGRESS_PREFIX, QUEUE_NAME
from backend.leases import Lease
from backend.modelfiles import serve_registered
from backend.models import (
    Job,
    JobConfig,
    Model,
    ModelFormat,
    Owner,
    ResultRow,
    Shard,
    ShardState,
)
from backend.queue import SHARD_TASK, ShardTask, redis_settings
from backend.reconcile import reconcile
from backend.sandbox.process import (
    ModelFailed,
    ModelProcess,
    ModelStopped,
    RemoteVoter,
    SandboxUnavailable,
    VotesCancelled,
)
from engine.data import ImageDataset
from engine.hardware import native_bf16
from engine.schedule import SampleSchedule
from engine.smooth import CertifyResult, SmoothedClassifier, certify_group

log = structlog.get_logger("kavach.worker")
MODEL_CACHE_SIZE = 4
CLOSE_SECONDS = 10.0


class ShardStopped(Exception):
    """The job was cancelled or finished elsewhere; the shard stops without error."""


@dataclass
class ShardWork:
    lease: Lease
    config: JobConfig
    smoothed: SmoothedClassifier
    data: ImageDataset
    schedule: SampleSchedule | None
    todo: list[int]
    deadline: float  # time.monotonic() past which the shard stops
    budget: float  # the seconds that deadline allowed
    lost: threading.Event  # set when the lease's heartbeat finds the shard is no longer this attempt's


def channels_last_for(fmt: ModelFormat) -> bool:
    """Whether the worker runs a model of format ``fmt`` in NHWC, on every device: as ``kavach certify`` does by
    default. On a CPU NCHW ran below Cohen's fp32 loop (0.95x on the digits CNN in ``make bench``, AVX2-only
    EPYC) where NHWC ran above it, and NHWC pays on GPUs; ``bench.engine_bench.WORKER_CPU_VARIANT`` is this
    choice as the bench measures it (a test keeps the two equal). A TorchScript archive keeps its saved layout."""
    return fmt is not ModelFormat.torchscript


def model_options(model: Model, config: JobConfig) -> dict[str, Any]:
    """The model process's options for ``config`` on ``model``: the job's precision and graph, and the layout."""
    return {"num_classes": model.num_classes, "sigma": config.sigma, "bf16": config.bf16,
            "compile": config.compile, "freeze": config.freeze, "channels_last": channels_last_for(model.format)}


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
            options = model_options(model, config)
            process = serve_registered(model, denoiser, settings=self.settings, device=self.device, options=options)
            log.info("model process started", job=job.id, key=key, pid=process.process.pid)
            if config.bf16 and not (bf16 := native_bf16(self.device))[0]:
                # run as asked: the job's certificate is the bf16 model's, so fp32 here would certify another model
                log.warning("bf16 job on a device that emulates bf16: slower than fp32", job=job.id, why=bf16[1])
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


def shard_deadline(settings: Settings, inputs: int, config: JobConfig) -> float:
    """Seconds a shard may take: a base plus a per-sample allowance for every sample it may draw."""
    return settings.SHARD_BASE_SECONDS + settings.SHARD_SECONDS_PER_SAMPLE * inputs * (config.n0 + config.n)


def begin_shard(resources: Resources, task: ShardTask) -> ShardWork:
    with Session(get_engine()) as session:
        lease = leases.claim(session, task.shard_id)
        if lease is None:  # cancelled, finished, or its job is over
            raise ShardStopped
        shard, job = session.get(Shard, task.shard_id), session.get(Job, task.job_id)
        stored = set(session.exec(select(ResultRow.index).where(ResultRow.job_id == job.id,
                                                                col(ResultRow.index).in_(shard.indices))).all())
        config = JobConfig(**job.config)
        process = resources.model_process(session, job, config)
        data = resources.dataset(session, job)
        classes = session.get(Model, job.model_id).num_classes
        todo = [i for i in shard.indices if i not in stored]
    d = data.x[0].numel()
    noise = config.make_noise(d)
    budget = shard_deadline(resources.settings, len(todo), config)
    deadline = time.monotonic() + budget
    lost = threading.Event()
    # the certificate's arithmetic stays here; the model process only answers votes, and is told to stop
    # between batches once the job is cancelled, the lease is lost or the deadline passes
    voter = RemoteVoter(process, should_stop=lambda: lost.is_set() or time.monotonic() > deadline
                        or job_finished(task.job_id))
    smoothed = SmoothedClassifier(voter, classes, noise)
    return ShardWork(lease, config, smoothed, data, config.make_schedule(), todo, deadline, budget, lost)


def job_finished(job_id: int) -> bool:
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        return job is None or job.state.finished


class ShardDeadline(Exception):
    """The shard ran past its deadline."""


def check_going(work: ShardWork) -> None:
    """Between inputs: stop if the job is over or the lease lost, and fail past the deadline."""
    if work.lost.is_set() or job_finished(work.lease.job_id):
        raise ShardStopped
    if time.monotonic() > work.deadline:
        raise ShardDeadline


def result_row(work: ShardWork, index: int, result: CertifyResult) -> ResultRow:
    return ResultRow(job_id=work.lease.job_id, shard_id=work.lease.shard_id, index=index,
                     label=int(work.data.y[index]), prediction=result.prediction, radius=result.radius,
                     p_lower=result.p_lower, p_upper=result.p_upper, q_lower=result.q_lower, q_upper=result.q_upper,
                     samples=result.samples, seconds=result.seconds, top_class=result.top_class,
                     runner_up=result.runner_up)


def store_rows(work: ShardWork, rows: list[ResultRow]) -> None:
    with Session(get_engine()) as session:
        try:
            leases.store_rows(session, work.lease, rows)
        except leases.Fenced:
            work.lost.set()
            raise ShardStopped from None


def certify_inputs(work: ShardWork, group: list[int]) -> None:
    """Certify one of the config's groups (one input unless ``pack`` > 1) as ``kavach certify`` does, and
    store its rows at once, in one transaction."""
    check_going(work)
    results = certify_group(work.smoothed, work.config, work.data.x[group], group[0], work.schedule)
    store_rows(work, [result_row(work, index, result) for index, result in zip(group, results, strict=True)])


def finish_shard(lease: Lease, state: ShardState, error: str | None = None) -> None:
    with Session(get_engine()) as session:
        leases.finish(session, lease, state, error)


async def keep_lease(redis: Any, arq_job_id: str, lease: Lease, lost: threading.Event, lease_s: float) -> None:
    """Renew arq's in-progress marker (once it lapses, arq hands the task to another worker) and the
    database heartbeat (once it is stale, the reconciler may) every third of the lease. A failed renewal
    is retried at the next tick, never fatal; a heartbeat that finds the shard taken sets ``lost``."""
    key = ARQ_IN_PROGRESS_PREFIX + arq_job_id
    while True:
        try:
            await redis.pexpire(key, int(lease_s * 1000))
        except Exception as error:  # noqa: BLE001  Redis away for a moment: the next tick tries again
            log.warning("lease renewal in redis failed", task=arq_job_id, error=repr(error))
        try:
            if not await asyncio.to_thread(lambda: heartbeat(lease)):
                lost.set()
                return
        except Exception as error:  # noqa: BLE001  the database away for a moment
            log.warning("heartbeat in the database failed", task=arq_job_id, error=repr(error))
        await asyncio.sleep(lease_s / 3)


def heartbeat(lease: Lease) -> bool:
    with Session(get_engine()) as session:
        return leases.heartbeat(session, lease)


async def certify_shard(ctx: dict[str, Any], task: dict[str, int]) -> dict[str, Any]:
    settings: Settings = ctx["settings"]
    shard_task = ShardTask(**task)
    started, done, work = time.perf_counter(), 0, None
    lease_task: asyncio.Task | None = None
    try:
        work = await asyncio.to_thread(begin_shard, ctx["resources"], shard_task)
        lease_task = asyncio.create_task(keep_lease(ctx["redis"], ctx["job_id"], work.lease, work.lost,
                                                    settings.SHARD_LEASE_SECONDS))
        log.info("shard started", job=shard_task.job_id, shard=shard_task.shard_id, todo=len(work.todo),
                 token=work.lease.token, attempt=work.lease.attempts)
        for group in work.config.groups(work.todo):
            await asyncio.to_thread(certify_inputs, work, group)
            done += len(group)
        await asyncio.to_thread(finish_shard, work.lease, ShardState.done)
    except (ShardStopped, VotesCancelled) as stop:
        if work is not None and time.monotonic() > work.deadline and not work.lost.is_set():
            return await fail_for_good(work, shard_task, done, ShardDeadline())
        log.info("shard stopped", job=shard_task.job_id, shard=shard_task.shard_id, certified=done,
                 why=type(stop).__name__)
        return {"certified": done, "stopped": True}
    except (ValueError, ModelFailed, SandboxUnavailable, ShardDeadline) as error:
        # the job's settings cannot work (the engine's checks), the model raises, this server cannot
        # sandbox models, or the shard ran out of time: another try would end the same way
        return await fail_for_good(work, shard_task, done, error)
    except Exception as error:  # a model process stopped by a limit or killed, the database or Redis gone...
        attempts = work.lease.attempts if work is not None else ctx["job_try"]
        if work is not None and attempts >= settings.SHARD_MAX_TRIES:
            why = str(error) if isinstance(error, ModelStopped) else repr(error)
            await asyncio.to_thread(finish_shard, work.lease, ShardState.failed,
                                    f"shard failed after {attempts} attempts: {why}")
            log.warning("shard failed", job=shard_task.job_id, shard=shard_task.shard_id, error=why)
            return {"certified": done, "error": why}
        log.warning("shard will be retried", job=shard_task.job_id, shard=shard_task.shard_id, error=repr(error))
        raise Retry(defer=min(ctx["job_try"], 10)) from error
    finally:
        if lease_task is not None:
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
    log.info("shard done", job=shard_task.job_id, shard=shard_task.shard_id, certified=done,
             seconds=round(time.perf_counter() - started, 3))
    return {"certified": done}


async def fail_for_good(work: ShardWork | None, task: ShardTask, done: int, error: Exception) -> dict[str, Any]:
    why = str(error)
    if isinstance(error, ShardDeadline) and work is not None:
        why = (f"the shard ran past its deadline of {work.budget:,.0f} s (SHARD_BASE_SECONDS + "
               "SHARD_SECONDS_PER_SAMPLE for each sample it may draw)")
    if work is not None:
        await asyncio.to_thread(finish_shard, work.lease, ShardState.failed, why)
    log.warning("shard failed", job=task.job_id, shard=task.shard_id, error=why)
    return {"certified": done, "error": why}


_RESOURCES: dict[str, Resources] = {}  # one per process: model processes outlive a reconnect to Redis


async def startup(ctx: dict[str, Any]) -> None:
    ctx["settings"] = settings = get_settings()
    ctx["resources"] = _RESOURCES.setdefault("resources", Resources(settings))
    ctx["reconciler"] = asyncio.create_task(reconcile_forever(ctx["redis"], settings))


async def reconcile_forever(queue: Any, settings: Settings) -> None:
    """The reconciler at start and every RECONCILE_SECONDS; a failed pass (Redis or the database away) is
    logged and the next one tries again."""
    while True:
        try:
            await reconcile(queue, settings)
        except Exception as error:  # noqa: BLE001
            log.warning("reconcile pass failed", error=repr(error))
        await asyncio.sleep(settings.RECONCILE_SECONDS)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "reconciler" in ctx:
        ctx["reconciler"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ctx["reconciler"]


def close_resources() -> None:
    if "resources" in _RESOURCES:
        _RESOURCES.pop("resources").close()


def worker_settings(settings: Settings) -> dict[str, Any]:
    if settings.REDIS_URL is None:
        raise SystemExit("REDIS_URL is not set: point the worker at the API's Redis (make run prints it)")
    # the database counts a shard's attempts (SHARD_MAX_TRIES); arq's own count only backs it up, so that
    # arq never gives up on a task before the shard's attempts say so
    shard: Function = func(certify_shard, name=SHARD_TASK, max_tries=settings.SHARD_MAX_TRIES + 3,
                           timeout=7 * 24 * 3600)  # the shard keeps its own deadline, scaled by its samples
    return {"functions": [shard], "on_startup": startup, "on_shutdown": shutdown,
            "redis_settings": redis_settings(settings.REDIS_URL), "queue_name": QUEUE_NAME,
            "max_jobs": settings.WORKER_MAX_JOBS, "poll_delay": settings.WORKER_POLL_SECONDS, "keep_result": 3600,
            "handle_signals": True}


class ShardWorker(Worker):
    """arq's worker, remembering that it was asked to stop (so a lost Redis then does not restart it)."""

    stopping = threading.Event()

    def handle_sig(self, signum: Signals) -> None:
        ShardWorker.stopping.set()
        super().handle_sig(signum)

    async def close(self) -> None:
        if not ShardWorker.stopping.is_set():
            await super().close()
            return
        try:  # asked to stop: do not wait out the patient Redis retries if Redis is gone
            await asyncio.wait_for(super().close(), CLOSE_SECONDS)
        except (TimeoutError, RedisError, OSError) as error:
            log.warning("worker stopped without a clean goodbye to redis", error=repr(error))


def run_worker() -> None:
    """Run the arq worker; when Redis stays away longer than its commands retry, start it again once Redis
    answers (shards in flight are retried by arq or dispatched again by a reconciler)."""
    settings = get_settings()
    log.info("worker starting", redis=(settings.REDIS_URL or "").split("@")[-1])
    try:
        while True:
            try:
                ShardWorker(**worker_settings(settings)).run()
                return
            except (RedisError, OSError, ConnectionError, TimeoutError) as error:
                if ShardWorker.stopping.is_set():
                    return
                log.warning("worker lost redis; starting again", error=repr(error))
                time.sleep(2.0)
    finally:
        close_resources()


if __name__ == "__main__":
    run_worker()
