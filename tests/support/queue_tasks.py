"""Tasks on the ``cpu`` queue, for the worker-queue tests (``tests.support.queue_tasks``)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.config import get_settings
from app.tasks.broker import register_task

#: Redis key that, once set, lets every :func:`gated` task finish.
GATE_KEY_SUFFIX = "gate-open"


@register_task(task_name="tests.cpu_echo", queue="cpu")
async def cpu_echo(value: int) -> int:
    """Return ``value`` (a task of the ``cpu`` queue)."""
    return value


@register_task(task_name="tests.cpu_gated", queue="cpu")
async def gated() -> str:
    """Hold a slot of the ``cpu`` queue until the test opens the gate (a Redis key)."""
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url)
    try:
        while not await redis.exists(f"{settings.result_key_prefix}:{GATE_KEY_SUFFIX}"):
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    return "through"
