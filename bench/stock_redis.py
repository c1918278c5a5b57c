"""Configuration (c): taskiq-redis ``ListQueueBroker`` (at-most-once), ``RedisAsyncResultBackend``.

Both with their defaults; only the URLs (the queue and the results may use different Redis
databases) and the queue name come from the environment.
Worker: ``taskiq worker bench.stock_redis:broker -w 1``.
"""

from __future__ import annotations

import os

from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

broker = ListQueueBroker(
    os.environ.get("BENCH_QUEUE_URL", "redis://localhost:6379/0"),
    queue_name=os.environ.get("BENCH_QUEUE", "taskiq"),
).with_result_backend(
    RedisAsyncResultBackend(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
)


@broker.task
async def noop() -> None:
    """Do nothing."""
