"""Shard leases on a real database: the job is marked done however its last shards' closes interleave.

PostgreSQL from KAVACH_TEST_DATABASE_URL when set (CI), else SQLite in a temporary folder. The race
these tests pin down showed on PostgreSQL (READ COMMITTED): two workers closing a job's last two shards
at once each checked "are all shards done?" before the other's close was committed, so neither marked
the job done and it stayed running with every input certified.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from backend import leases
from backend.db import make_engine
from backend.migrate import upgrade_database
from backend.models import Job, JobState, Model, Owner, Shard, ShardState
from tests.backend.conftest import fresh_postgres


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    url, drop = f"sqlite:///{tmp_path / 'kavach.db'}", None
    if os.environ.get("KAVACH_TEST_DATABASE_URL"):
        url, drop = fresh_postgres(os.environ["KAVACH_TEST_DATABASE_URL"])
    upgrade_database(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        if drop is not None:
            drop()


def job_with_shards(engine: Engine, shards: int, owner_name: str = "alice") -> tuple[int, list[int]]:
    with Session(engine) as session:
        owner = Owner(name=owner_name)
        session.add(owner)
        session.flush()
        model = Model(owner_id=owner.id, name="m", input_shape=[1, 8, 8], num_classes=10, path="m.pt", size_bytes=1)
        session.add(model)
        session.flush()
        job = Job(owner_id=owner.id, model_id=model.id, dataset="digits", split="test", subset={}, config={},
                  total=shards)
        session.add(job)
        session.flush()
        rows = [Shard(job_id=job.id, number=n, indices=[n]) for n in range(shards)]
        session.add_all(rows)
        session.commit()
        return job.id, [row.id for row in rows]


def claimed(engine: Engine, shard_ids: list[int]) -> list[leases.Lease]:
    with Session(engine) as session:
        return [leases.claim(session, shard_id) for shard_id in shard_ids]


def job_state(engine: Engine, job_id: int) -> JobState:
    with Session(engine) as session:
        return session.exec(select(Job.state).where(Job.id == job_id)).one()


def test_two_workers_closing_the_last_two_shards_at_once_leave_the_job_done(engine, monkeypatch):
    job_id, shard_ids = job_with_shards(engine, 2)
    both = claimed(engine, shard_ids)
    assert job_state(engine, job_id) is JobState.running
    # Hold each done check until the other worker has reached its own (or 2 s have passed, when one
    # worker waits on the other's lock): the widest window two real workers can hit.
    meet = threading.Barrier(2)
    check = leases.complete_jobs

    def complete_jobs_when_both_arrive(session, job_id=None):
        try:
            meet.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return check(session, job_id)

    monkeypatch.setattr(leases, "complete_jobs", complete_jobs_when_both_arrive)
    closed, errors = [], []

    def close(lease: leases.Lease) -> None:
        try:
            with Session(engine) as session:
                closed.append(leases.finish(session, lease, ShardState.done))
        except Exception as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=close, args=(lease,)) for lease in both]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert closed == [True, True]
    assert job_state(engine, job_id) is JobState.done


def test_the_reconciler_marks_done_a_job_whose_shards_were_all_closed(engine):
    """The worker that closed the last shard died before its done check: the reconciler's sweep settles it,
    and leaves alone jobs with a shard still open and jobs already finished."""
    stuck, stuck_shards = job_with_shards(engine, 2)
    open_job, open_shards = job_with_shards(engine, 2, owner_name="bob")
    cancelled, cancelled_shards = job_with_shards(engine, 1, owner_name="carol")
    with Session(engine) as session:
        for shard_id in stuck_shards + open_shards[:1] + cancelled_shards:
            shard = session.get(Shard, shard_id)
            shard.state = ShardState.done
        session.get(Job, stuck).state = JobState.running
        session.get(Job, cancelled).state = JobState.cancelled
        session.commit()
        assert leases.complete_jobs(session) == [stuck]
        assert leases.complete_jobs(session) == []
    assert job_state(engine, stuck) is JobState.done
    assert job_state(engine, open_job) is JobState.queued
    assert job_state(engine, cancelled) is JobState.cancelled

