"""Celery 5 on Redis (broker and result backend), ``task_acks_late``, a no-op task.

The task stores its result (``None``); Celery's defaults otherwise.

Worker: ``celery -A bench.peers.celery_app worker -P prefork|threads [-c N]``.
Client: ``noop.delay().get()`` (``AsyncResult.get``: the Redis backend wakes waiters by pub/sub).

Environment: ``BENCH_QUEUE_URL`` (broker), ``REDIS_URL`` (results), ``BENCH_QUEUE`` (queue name),
``BENCH_CELERY_PREFETCH`` (``worker_prefetch_multiplier``; unset keeps Celery's default, 4).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_QUEUE_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("REDIS_URL", "redis://localhost:6379/1"),
)
app.conf.update(
    task_acks_late=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_CELERY_PREFETCH"):
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_CELERY_PREFETCH"])


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing (the result, ``None``, is stored)."""
