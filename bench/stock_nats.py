"""Configuration (b): taskiq-nats ``PullBasedJetStreamBroker`` and ``RedisAsyncResultBackend``.

Both with their defaults (batch 1, pickle results, no TTL), as a user wires them by hand. Only the
server URLs and the stream/subject/durable names (so that runs do not share state) come from the
environment. Worker: ``taskiq worker bench.stock_nats:broker -w 1``.
"""

from __future__ import annotations

import os

from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend

broker = PullBasedJetStreamBroker(
    servers=os.environ.get("NATS_URL", "nats://localhost:4222"),
    subject=os.environ.get("BENCH_SUBJECT", "taskiq_tasks"),
    stream_name=os.environ.get("BENCH_STREAM", "taskiq_jetstream"),
    durable=os.environ.get("BENCH_DURABLE", "taskiq_durable"),
).with_result_backend(
    RedisAsyncResultBackend(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
)


@broker.task
async def noop() -> None:
    """Do nothing."""
