"""Example tasks: the seed's two, plus tasks for tests, demos and benchmarks.

Their names are pinned (``task_name=``) to what they have always been, so moving this module never
orphans a queued message. The costly ones are bounded: ``sleep_task`` holds a worker slot for at
most :data:`MAX_SLEEP_SECONDS`, ``cpu_burn`` burns at most :data:`MAX_BURN_SECONDS` of CPU a call.
``cpu_burn`` goes to the ``cpu`` queue: a worker runs it only when its ``WORKER_QUEUES`` include
``cpu`` (``make run`` serves ``default,cpu``). The chart leaves this module out unless you opt in;
``kiqstack.ping`` and ``kiqstack.echo`` (:mod:`app.tasks.builtin`) are always there.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Final

from pydantic import Field

from app.tasks.broker import register_task

#: Longest ``sleep_task`` (seconds): it keeps one of the worker's WORKER_CONCURRENCY slots.
MAX_SLEEP_SECONDS: Final = 60.0
#: Longest ``cpu_burn`` (CPU seconds of one call).
MAX_BURN_SECONDS: Final = 10.0


@register_task(task_name="app.tasks.example:example_task")
async def example_task(arg1: str, arg2: int) -> str:
    """Process some data (the seed's example)."""
    return f"Processed: {arg1}, {arg2}"


@register_task(task_name="app.tasks.example:risky_task")
async def risky_task() -> None:
    """Fail on purpose, to show error capture."""
    raise ValueError("Something went wrong")


@register_task(task_name="app.tasks.example:add")
async def add(a: int | float, b: int | float) -> int | float:
    """Add two numbers."""
    return a + b


@register_task(task_name="app.tasks.example:noop")
async def noop() -> None:
    """Do nothing (benchmarks measure kiqstack's own overhead with it)."""


@register_task(task_name="app.tasks.example:sleep_task")
async def sleep_task(seconds: Annotated[float, Field(ge=0, le=MAX_SLEEP_SECONDS)]) -> float:
    """Sleep without blocking the worker (at most 60 s), then return how long it slept."""
    if not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SLEEP_SECONDS:g}")
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


@register_task(task_name="app.tasks.example:cpu_burn", queue="cpu")
def cpu_burn(seconds: Annotated[float, Field(ge=0, le=MAX_BURN_SECONDS)] = 1.0) -> int:
    """Keep one CPU busy for ``seconds``, at most 10 (drives the worker HPA in demos).

    A sync task: taskiq runs it in a thread, so the worker keeps serving probes meanwhile.
    """
    if not 0 <= seconds <= MAX_BURN_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_BURN_SECONDS:g}")
    return _burn(seconds)
