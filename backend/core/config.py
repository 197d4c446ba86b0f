"""Service settings, read once from the environment (and a .env file) by pydantic-settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path("data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    PROJECT_NAME: str = "Kavach"
    API_V1_STR: str = "/api/v1"
    DATABASE_URL: str = f"sqlite:///{DATA_DIR / 'kavach.db'}"
    # unset: `make run` (and the tests) start an embedded Redis on a unix socket under DATA_DIR
    REDIS_URL: str | None = None
    STORAGE_DIR: Path = DATA_DIR / "storage"
    MAX_UPLOAD_BYTES: int = 200 * 1024 * 1024
    SHARD_SIZE: int = 25
    PORT: int = 8000
    # a shard whose worker stops renewing its lease (killed, machine lost) is retried after this long
    SHARD_LEASE_SECONDS: float = 30.0
    SHARD_MAX_TRIES: int = 5
    WORKER_POLL_SECONDS: float = 0.1
    # shards one worker process runs at once; one per GPU keeps the device busy without thrashing
    WORKER_MAX_JOBS: int = 1
    DEVICE: str | None = None  # cpu, cuda, cuda:1 ... (default: cuda when available)
    CIFAR10_DIR: Path | None = None
    PROGRESS_INTERVAL_SECONDS: float = 0.5

    # -- the sandbox that loads and runs users' model files (backend/sandbox) --------------------
    # strict: Landlock (files), seccomp (no sockets, no ptrace), rlimits and a clean environment, or the
    # model is refused; off: run models in a plain child process (trusted single-user machines only)
    SANDBOX: Literal["strict", "off"] = "strict"
    SANDBOX_CHECK_MEMORY_BYTES: int = 4 << 30  # the upload check: one forward pass on a zero input
    SANDBOX_CHECK_SECONDS: float = 120.0  # wall clock for the whole check, interpreter start included
    SANDBOX_CHECK_CPU_SECONDS: int = 240
    SANDBOX_MEMORY_BYTES: int = 24 << 30  # a worker's model process (batches of noisy copies)
    SANDBOX_LOAD_SECONDS: float = 900.0  # loading, freezing or compiling the model in a worker
    SANDBOX_BATCH_SECONDS: float = 600.0  # a worker's model process must finish each batch within this
    SANDBOX_THREADS: int | None = None  # torch threads in a worker's model process (default: all cores)
    SANDBOX_CACHE_SIZE: int = 2  # model processes one worker keeps alive for later shards

    # -- bounds on what a request may ask (each a 4xx naming the limit) --------------------------
    MAX_JSON_BYTES: int = 1 << 20
    MAX_INPUT_ELEMENTS: int = 3 * 512 * 512  # C x H x W of one input
    MAX_CLASSES: int = 100_000
    MAX_N: int = 10_000_000
    MAX_N0: int = 1_000_000
    MAX_BATCH_SIZE: int = 65_536
    MAX_PACK: int = 1024
    MAX_JOB_INPUTS: int = 100_000
    MAX_PAGE_SIZE: int = 1000  # list endpoints; a results page may hold 10,000
    MAX_ACTIVE_JOBS_PER_OWNER: int = 20
    MAX_SAMPLES_IN_FLIGHT_PER_OWNER: int = 100_000_000_000
    # a shard's deadline: this much plus the time its samples may take at this rate
    SHARD_BASE_SECONDS: float = 600.0
    SHARD_SECONDS_PER_SAMPLE: float = 0.02

    # -- uploaded datasets (decompression bombs are refused before they expand) ------------------
    MAX_DATASET_ELEMENTS: int = 1_000_000_000  # N x C x H x W, stored as uint8
    MAX_DATASET_IMAGES: int = 1_000_000
    MAX_IMAGE_PIXELS: int = 4096 * 4096  # one image in an uploaded zip, checked before decoding

    # -- queue reliability -------------------------------------------------------------------------
    RECONCILE_SECONDS: float = 15.0  # workers re-enqueue lost shards and fail exhausted ones this often

    # -- tokens and metrics ------------------------------------------------------------------------
    # /metrics counts every owner's jobs: it needs this bearer token when set; unset and not public, it is off
    METRICS_TOKEN: str | None = None
    METRICS_PUBLIC: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
