"""What crosses the queue, and putting it there (arq on Redis).

The database is the source of truth and Redis only carries work: a shard's arq task is named by its
dispatch count (``kavach:shard:<id>:<dispatch>``), so when the reconciler finds a shard's task gone
(Redis restarted without persistence, arq gave up on it) it dispatches the shard again under a new
name, which arq's own dedup of finished task ids cannot refuse.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from backend.keys import QUEUE_NAME, SHARD_JOB_PREFIX

SHARD_TASK = "certify_shard"
ENQUEUE_SECONDS = 3.0  # an API request waits this long for Redis; the reconciler enqueues what it missed


@dataclass(frozen=True)
class ShardTask:
    job_id: int
    shard_id: int


def shard_task_id(shard_id: int, dispatch: int) -> str:
    return f"{SHARD_JOB_PREFIX}{shard_id}:{dispatch}"


def redis_settings(url: str, *, patient: bool = True) -> RedisSettings:
    """arq's settings for ``url``; ``patient`` commands ride out a Redis restart (reconnecting with backoff
    for about a minute) instead of failing on the first broken connection."""
    settings = RedisSettings.from_dsn(url)
    if patient:
        settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError, OSError]
        settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=40)
        settings.conn_retries = 60
    return settings


async def open_queue(url: str, *, patient: bool = True) -> ArqRedis:
    return await create_pool(redis_settings(url, patient=patient), default_queue_name=QUEUE_NAME)


async def enqueue_shard(queue: ArqRedis, task: ShardTask, dispatch: int) -> None:
    # a stable arq job id per dispatch: enqueueing the same dispatch twice is a no-op
    await queue.enqueue_job(SHARD_TASK, asdict(task), _job_id=shard_task_id(task.shard_id, dispatch),
                            _queue_name=QUEUE_NAME)


async def try_enqueue(queue: ArqRedis, tasks: list[ShardTask]) -> bool:
    """Enqueue first dispatches within ENQUEUE_SECONDS; False when Redis did not take them all (the shards
    stay queued in the database, and a worker's reconciler enqueues them once Redis answers)."""
    try:
        await asyncio.wait_for(asyncio.gather(*(enqueue_shard(queue, task, 0) for task in tasks)), ENQUEUE_SECONDS)
    except (TimeoutError, OSError, RedisConnectionError, RedisTimeoutError):
        return False
    return True
