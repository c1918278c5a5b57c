"""arq (asyncio, Redis), a no-op job; arq always stores results (``keep_result`` 3600 s).

Runs in its own virtualenv (arq 0.28 needs redis-py < 6; ``bench/requirements-arq.txt``).
Worker: ``arq bench.peers.arq_app.WorkerSettings``.
Client: ``await (await pool.enqueue_job("noop")).result(poll_delay=...)``.

Environment: ``BENCH_QUEUE_URL`` (queue, jobs and results: arq keeps them in one database),
``BENCH_QUEUE`` (queue name), ``BENCH_ARQ_POLL`` (seconds; the worker's ``poll_delay`` and the
client's ``Job.result(poll_delay=)``; unset keeps arq's default, 0.5 s for both).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings

DEFAULT_POLL = 0.5


def poll_delay() -> float:
    """The poll delay of this run (arq's default unless ``BENCH_ARQ_POLL`` is set)."""
    return float(os.environ.get("BENCH_ARQ_POLL") or DEFAULT_POLL)


def redis_settings() -> RedisSettings:
    """Where arq keeps its queue, jobs and results."""
    return RedisSettings.from_dsn(os.environ.get("BENCH_QUEUE_URL", "redis://localhost:6379/0"))


async def noop(ctx: dict[str, Any]) -> None:
    """Do nothing (the result, ``None``, is stored)."""


class WorkerSettings:
    """``arq bench.peers.arq_app.WorkerSettings``: arq's defaults but for the poll delay knob."""

    functions: ClassVar[list[Any]] = [noop]
    redis_settings = redis_settings()
    queue_name = os.environ.get("BENCH_QUEUE", "arq:queue")
    poll_delay = poll_delay()
