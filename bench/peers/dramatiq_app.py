"""Dramatiq on Redis with the ``Results`` middleware (Redis backend), a no-op actor.

The actor stores its result (``None``); Dramatiq's defaults otherwise.

Worker: ``dramatiq bench.peers.dramatiq_app --processes 1`` (8 threads, Dramatiq's default).
Client: ``noop.send().get_result(block=True)``.

Environment: ``BENCH_QUEUE_URL`` (broker), ``REDIS_URL`` (results), ``BENCH_QUEUE`` (queue name).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

broker = RedisBroker(url=os.environ.get("BENCH_QUEUE_URL", "redis://localhost:6379/0"))
broker.add_middleware(
    Results(backend=RedisBackend(url=os.environ.get("REDIS_URL", "redis://localhost:6379/1")))
)
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name=os.environ.get("BENCH_QUEUE", "default"))
def noop() -> None:
    """Do nothing (the result, ``None``, is stored)."""
