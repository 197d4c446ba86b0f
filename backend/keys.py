"""Every Redis name the service uses, in one place (arq's ``constants`` habit)."""

QUEUE_NAME = "kavach:queue"
# arq job ids for shards: stable, so a shard is never enqueued twice
SHARD_JOB_PREFIX = "kavach:shard:"
# arq's own in-progress marker; renewing it is the shard's lease
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"
