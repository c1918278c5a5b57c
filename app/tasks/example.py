"""Example tasks: the seed's two, plus tasks for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import hashlib
import time

from app.tasks.broker import register_task


@register_task()
async def example_task(arg1: str, arg2: int) -> str:
    """Process some data (the seed's example)."""
    return f"Processed: {arg1}, {arg2}"


@register_task()
async def risky_task() -> None:
    """Fail on purpose, to show error capture."""
    raise ValueError("Something went wrong")


@register_task()
async def add(a: int | float, b: int | float) -> int | float:
    """Add two numbers."""
    return a + b


@register_task()
async def noop() -> None:
    """Do nothing (benchmarks measure kiqstack's own overhead with it)."""


@register_task()
async def sleep_task(seconds: float) -> float:
    """Sleep without blocking the worker, then return how long it slept."""
    if not 0 <= seconds <= 3600:
        raise ValueError("seconds must be between 0 and 3600")
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return round(time.monotonic() - started, 3)


def _burn(seconds: float) -> int:
    deadline = time.monotonic() + seconds
    rounds = 0
    digest = b"kiqstack"
    while time.monotonic() < deadline:
        for _ in range(1000):
            digest = hashlib.sha256(digest).digest()
        rounds += 1
    return rounds


@register_task()
def cpu_burn(seconds: float = 1.0) -> int:
    """Keep one CPU busy for ``seconds`` (drives the worker HPA in demos).

    A sync task: taskiq runs it in a thread, so the worker keeps serving probes meanwhile.
    """
    if not 0 <= seconds <= 600:
        raise ValueError("seconds must be between 0 and 600")
    return _burn(seconds)
