"""What crosses the queue, and putting it there (arq on Redis)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from backend.keys import QUEUE_NAME, SHARD_JOB_PREFIX

SHARD_TASK = "certify_shard"


@dataclass(frozen=True)
class ShardTask:
    job_id: int
    shard_id: int


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def open_queue(url: str) -> ArqRedis:
    return await create_pool(redis_settings(url), default_queue_name=QUEUE_NAME)


async def enqueue_shards(queue: ArqRedis, tasks: list[ShardTask]) -> None:
    for task in tasks:
        # a stable arq job id per shard: enqueueing the same shard twice is a no-op
        await queue.enqueue_job(SHARD_TASK, asdict(task), _job_id=f"{SHARD_JOB_PREFIX}{task.shard_id}",
                                _queue_name=QUEUE_NAME)
