"""A periodic task of the scheduler tests: every second, it records its run in Redis."""

from __future__ import annotations

import json
import os

from redis.asyncio import Redis
from taskiq import Context, TaskiqDepends

from app.tasks.broker import register_task


@register_task(task_name="tests.tick", schedule=[{"every": 1, "name": "tick"}])
async def tick(context: Context = TaskiqDepends()) -> str:  # noqa: B008
    """Append ``{"task_id", "next"}`` of this run to ``ticks:<NATS_STREAM>``."""
    labels = context.message.labels
    entry = {"task_id": context.message.task_id, "next": labels.get("kiq_schedule_next")}
    async with Redis.from_url(os.environ["REDIS_URL"]) as redis:
        await redis.rpush(f"ticks:{os.environ['NATS_STREAM']}", json.dumps(entry))
    return context.message.task_id
