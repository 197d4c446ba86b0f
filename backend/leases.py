"""A shard's lease in the database, the source of truth: claim, heartbeat, store under a token, finish.

Every state change is one conditional UPDATE, so two writers never overwrite each other: a cancel
that lands between a worker's read and its write stands, a job that is done stays done. Each
attempt at a shard takes a fencing token (the shard's ``token`` + 1); rows are stored only in a
transaction that first confirms the shard is still running under that token, so an attempt that
lost its lease (its worker stalled, the reconciler or arq started another) can never write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from backend.models import Job, JobState, ResultRow, Shard, ShardState, utcnow

ACTIVE_JOB = (JobState.queued, JobState.running)
OPEN_SHARD = (ShardState.queued, ShardState.running)


class Fenced(Exception):
    """The shard is no longer this attempt's: another attempt took it, or it was cancelled or finished."""


@dataclass(frozen=True)
class Lease:
    shard_id: int
    job_id: int
    token: int
    attempts: int


def claim(session: Session, shard_id: int) -> Lease | None:
    """Take the shard for a new attempt (token + 1), and mark its job running if it was queued; None when
    the shard is not open or its job is finished."""
    now = utcnow()
    row = session.execute(
        update(Shard).where(col(Shard.id) == shard_id, col(Shard.state).in_(OPEN_SHARD),
                            exists().where(col(Job.id) == Shard.job_id, col(Job.state).in_(ACTIVE_JOB)))
        .values(state=ShardState.running, token=Shard.token + 1, attempts=Shard.attempts + 1, heartbeat_at=now,
                started_at=func.coalesce(Shard.started_at, now))
        .returning(Shard.job_id, Shard.token, Shard.attempts)).first()
    if row is None:
        session.rollback()
        return None
    job_id, token, attempts = row
    session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state) == JobState.queued)
                    .values(state=JobState.running, started_at=func.coalesce(Job.started_at, now)))
    session.commit()
    return Lease(shard_id=shard_id, job_id=job_id, token=token, attempts=attempts)


def _renew(session: Session, lease: Lease) -> bool:
    result = session.execute(update(Shard).where(col(Shard.id) == lease.shard_id, col(Shard.token) == lease.token,
                                                 col(Shard.state) == ShardState.running)
                             .values(heartbeat_at=utcnow()))
    return result.rowcount == 1


def heartbeat(session: Session, lease: Lease) -> bool:
    """Renew the lease's heartbeat; False once the shard is no longer this attempt's."""
    held = _renew(session, lease)
    session.commit()
    return held


def store_rows(session: Session, lease: Lease, rows: list[ResultRow]) -> None:
    """Store the rows in one transaction that confirms the lease first (it also renews it); rows a previous
    attempt stored already are skipped. Raises Fenced when the shard is no longer this attempt's."""
    if not _renew(session, lease):
        session.rollback()
        raise Fenced
    session.add_all(rows)
    try:
        session.commit()
        return
    except IntegrityError:  # an earlier attempt stored some of them before it lost its lease
        session.rollback()
    if len(rows) == 1:
        return
    for row in rows:  # fresh copies: the failed flush may have set ids
        store_rows(session, lease, [ResultRow(**row.model_dump(exclude={"id"}))])


def _seconds(started: datetime | None, finished: datetime) -> float | None:
    if started is None:
        return None
    return (finished - (started if started.tzinfo else started.replace(tzinfo=finished.tzinfo))).total_seconds()


def finish(session: Session, lease: Lease, state: ShardState, error: str | None = None) -> bool:
    """Close the shard under its lease (False when fenced out), then settle the job: failed with ``error``
    (its queued shards cancelled), or done once every shard is done.

    The done check runs in a transaction of its own, after the shard's close is committed. Run in the
    closing transaction, two workers closing a job's last two shards at once would each miss the
    other's uncommitted close (READ COMMITTED) and the job would stay running forever; after the commit,
    whichever commits last sees every close. A worker that dies between the two leaves it to the
    reconciler (``complete_jobs``)."""
    now = utcnow()
    started = session.exec(select(Shard.started_at).where(Shard.id == lease.shard_id)).one()
    closed = session.execute(update(Shard).where(col(Shard.id) == lease.shard_id, col(Shard.token) == lease.token,
                                                 col(Shard.state) == ShardState.running)
                             .values(state=state, finished_at=now, seconds=_seconds(started, now))).rowcount
    if closed != 1:
        session.rollback()
        return False
    if state is ShardState.failed:
        fail_job(session, lease.job_id, error or "a shard failed", now)
    session.commit()
    if state is ShardState.done:
        complete_jobs(session, lease.job_id)
    return True


def fail_job(session: Session, job_id: int, error: str, now: datetime) -> None:
    """Mark an active job failed and cancel its shards that have not started (in the caller's transaction)."""
    session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state).in_(ACTIVE_JOB))
                    .values(state=JobState.failed, error=error[:2000], finished_at=now))
    session.execute(update(Shard).where(col(Shard.job_id) == job_id, col(Shard.state) == ShardState.queued)
                    .values(state=ShardState.cancelled))


def complete_jobs(session: Session, job_id: int | None = None) -> list[int]:
    """Mark done the active job ``job_id`` (every active job when None) if all of its shards are done, and
    commit; the ids it marked. The reconciler's sweep settles a job whose last shard's worker died before
    its own call."""
    where = [col(Job.state).in_(ACTIVE_JOB), exists().where(col(Shard.job_id) == Job.id),
             ~exists().where(col(Shard.job_id) == Job.id, col(Shard.state) != ShardState.done)]
    if job_id is not None:
        where.append(col(Job.id) == job_id)
    done = session.execute(update(Job).where(*where).values(state=JobState.done, finished_at=utcnow())
                           .returning(Job.id)).scalars().all()
    session.commit()
    return sorted(done)


def cancel_job(session: Session, job_id: int) -> None:
    """Cancel an active job and its open shards; a finished job is left as it is."""
    now = utcnow()
    cancelled = session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state).in_(ACTIVE_JOB))
                                .values(state=JobState.cancelled, finished_at=now)).rowcount
    if cancelled:
        session.execute(update(Shard).where(col(Shard.job_id) == job_id, col(Shard.state).in_(OPEN_SHARD))
                        .values(state=ShardState.cancelled))
    session.commit()


def stale_before(lease_seconds: float) -> datetime:
    """Heartbeats older than this belong to attempts whose worker is gone (three renewals missed)."""
    return utcnow() - timedelta(seconds=lease_seconds)
