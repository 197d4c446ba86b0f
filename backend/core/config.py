"""Service settings, read once from the environment (and a .env file) by pydantic-settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
