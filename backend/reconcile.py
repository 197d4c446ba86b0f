"""The reconciler: the database says which shards must run; Redis is made to agree with it.

Every worker runs it at start and every RECONCILE_SECONDS. For each open shard of an active job it
asks whether the shard is alive: running with a fresh heartbeat, or its current arq task still in
Redis (queued, deferred for a retry, or in progress). A shard that is neither lost its task: Redis
restarted without persistence, the API could not enqueue it, or arq gave up after its worker died
on every try. Such a shard is dispatched again under a new task name, or, once it has had
SHARD_MAX_TRIES attempts, marked failed with its job. The dispatch count is bumped by a conditional
update, so of several workers reconciling at once only one enqueues. An active job whose shards are all
done (the worker that closed the last one died before marking it) is marked done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from sqlalchemy import update
from sqlmodel import Session, col, select

from backend.core.config import Settings
from backend.db import get_engine
from backend.leases import ACTIVE_JOB, OPEN_SHARD, complete_jobs, fail_job, stale_before
from backend.models import Job, Shard, ShardState, utcnow
from backend.queue import ShardTask, enqueue_shard, shard_task_id

log = structlog.get_logger("kavach.reconcile")


@dataclass
class Report:
    dispatched: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    completed_jobs: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dispatched": self.dispatched, "failed": self.failed, "completed_jobs": self.completed_jobs}


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def suspects(settings: Settings) -> list[Shard]:
    """Open shards of active jobs that are neither running with a fresh heartbeat nor just dispatched."""
    fresh = stale_before(settings.SHARD_LEASE_SECONDS)
    settle = utcnow() - timedelta(seconds=settings.RECONCILE_SECONDS)
    query = select(Shard).join(Job, col(Job.id) == Shard.job_id).where(col(Shard.state).in_(OPEN_SHARD),
                                                                       col(Job.state).in_(ACTIVE_JOB))
    with Session(get_engine()) as session:
        shards = list(session.exec(query.order_by(col(Shard.id))).all())
    alive = [s for s in shards if s.state is ShardState.running and (_aware(s.heartbeat_at) or fresh) > fresh
             or s.state is ShardState.queued and (_aware(s.dispatched_at) or settle) > settle]
    return [s for s in shards if s not in alive]


def settle_lost(shard: Shard, max_tries: int) -> int | None:
    """A shard whose task is gone: the next dispatch number to enqueue, or None (failed after its tries,
    or another reconciler got there first)."""
    with Session(get_engine()) as session:
        if shard.attempts >= max_tries:
            now = utcnow()
            closed = session.execute(update(Shard).where(col(Shard.id) == shard.id, col(Shard.token) == shard.token,
                                                         col(Shard.state).in_(OPEN_SHARD))
                                     .values(state=ShardState.failed, finished_at=now)).rowcount
            if closed:
                fail_job(session, shard.job_id, f"shard {shard.number} stopped after {shard.attempts} attempts: "
                                                "its worker or model process died each time", now)
            session.commit()
            return None
        dispatch = shard.dispatches + 1
        won = session.execute(update(Shard).where(col(Shard.id) == shard.id, col(Shard.dispatches) == shard.dispatches,
                                                  col(Shard.token) == shard.token, col(Shard.state).in_(OPEN_SHARD))
                              .values(dispatches=dispatch, dispatched_at=utcnow())).rowcount
        session.commit()
        return dispatch if won else None


def _complete_jobs() -> list[int]:
    with Session(get_engine()) as session:
        return complete_jobs(session)


async def task_in_redis(queue: ArqRedis, task_id: str) -> bool:
    return bool(await queue.exists(job_key_prefix + task_id, in_progress_key_prefix + task_id,
                                   retry_key_prefix + task_id))


async def reconcile(queue: ArqRedis, settings: Settings) -> Report:
    """One pass over the open shards (see the module's docstring); what it dispatched and failed."""
    report = Report()
    for shard in await asyncio.to_thread(suspects, settings):
        if await task_in_redis(queue, shard_task_id(shard.id, shard.dispatches)):
            continue  # arq has it (queued, retrying, or running until its lease lapses)
        dispatch = await asyncio.to_thread(settle_lost, shard, settings.SHARD_MAX_TRIES)
        if dispatch is None:
            if shard.attempts >= settings.SHARD_MAX_TRIES:
                report.failed.append(shard.id)
            continue
        await enqueue_shard(queue, ShardTask(job_id=shard.job_id, shard_id=shard.id), dispatch)
        report.dispatched.append(shard.id)
    report.completed_jobs = await asyncio.to_thread(_complete_jobs)
    if report.dispatched or report.failed or report.completed_jobs:
        log.info("reconciled", **report.as_dict())
    return report
