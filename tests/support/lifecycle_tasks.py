"""Tasks of the lifecycle tests (retries, delays, cancellation, progress), recording in Redis."""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis
from taskiq import TaskiqDepends

from app.errors import TaskCancelledError
from app.lifecycle.cancel import Cancellation
from app.lifecycle.progress import Progress
from app.tasks.broker import register_task


def _redis() -> Redis:
    return Redis.from_url(os.environ["REDIS_URL"])


@register_task(
    task_name="tests.flaky",
    retry_on_error=True,
    max_retries=3,
    retry_backoff=0.2,
    retry_on=(ConnectionError,),
)
async def flaky(key: str, fail_times: int) -> str:
    """Fail ``fail_times`` times (counted in Redis under ``key``), then succeed."""
    async with _redis() as redis:
        run = int(await redis.incr(key))
    if run <= fail_times:
        raise ConnectionError(f"failure {run}")
    return f"ok on run {run}"


@register_task(task_name="tests.always_fails", retry_on_error=True, max_retries=1, retry_backoff=4)
async def always_fails(key: str) -> None:
    """Fail every time (runs counted in Redis under ``key``)."""
    async with _redis() as redis:
        run = int(await redis.incr(key))
    raise ValueError(f"failure {run}")


@register_task(task_name="tests.marker")
async def marker(key: str) -> str:
    """Record in Redis that it ran (``key`` counts the runs)."""
    async with _redis() as redis:
        await redis.incr(key)
    return "ran"


@register_task(task_name="tests.until_cancelled")
async def until_cancelled(
    progress: Progress = TaskiqDepends(),  # noqa: B008
    cancel: Cancellation = TaskiqDepends(),  # noqa: B008
) -> str:
    """Report progress 0.5, then wait (up to a minute) until it is cancelled."""
    await progress.report(0.5, "half way")
    for _ in range(600):
        await cancel.raise_if_cancelled()
        await asyncio.sleep(0.1)
    raise TaskCancelledError("never cancelled")
