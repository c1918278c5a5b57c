"""Progress of a running task: reported by the task, shown by ``GET /tasks/{id}``, waited on.

::

    @register_task()
    async def import_file(path: str, progress: Progress = TaskiqDepends()) -> int:
        for done, row in enumerate(rows, 1):
            ...
            await progress.report(done / total, f"{done} of {total} rows")

A report is one Redis ``SET`` (same TTL as the result); the last one is kept.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from taskiq import Context, TaskiqDepends

if TYPE_CHECKING:
    from app.broker import KiqBroker

#: Seconds between two reads of :func:`wait_for_progress`.
POLL_SECONDS = 0.2


class Progress:
    """Reports the progress of the running task (a taskiq dependency)."""

    def __init__(self, context: Context = TaskiqDepends()) -> None:  # noqa: B008
        """Bind to the running task (taskiq injects the context)."""
        self.context = context

    async def report(self, value: float, message: str | None = None) -> None:
        """Record how far the task is.

        :param value: any finite number (for example a fraction from 0 to 1, or items done).
        :param message: what it is doing now (optional, at most 1000 characters kept).
        :raises ValueError: on NaN or infinity.
        """
        if not math.isfinite(value):
            raise ValueError(f"progress must be a finite number, not {value!r}")
        backend: Any = self.context.broker.result_backend
        text = message[:1000] if message is not None else None
        await backend.lifecycle.set_progress(self.context.message.task_id, float(value), text)


async def get_progress(broker: KiqBroker, task_id: str) -> dict[str, Any] | None:
    """Read a task's last progress: ``{"value", "message", "at"}``, or None before any report."""
    return await broker.results.lifecycle.read_progress(task_id)


async def wait_for_progress(
    broker: KiqBroker,
    task_id: str,
    at_least: float,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any] | None:
    """Wait until a task reports progress of at least ``at_least`` (or has a result).

    :param broker: a started broker.
    :param task_id: the task's id.
    :param at_least: the value to wait for.
    :param timeout: seconds to wait at most.
    :return: the last progress (None when none was reported); check it against ``at_least``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    results = broker.results
    while True:
        progress = await results.lifecycle.read_progress(task_id)
        if progress is not None and progress["value"] >= at_least:
            return progress
        if loop.time() >= deadline or await results.is_result_ready(task_id):
            return progress
        await asyncio.sleep(POLL_SECONDS)
