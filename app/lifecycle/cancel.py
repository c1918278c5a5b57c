"""Cancelling a task: a queued or delayed task never starts; a running one is told, cooperatively.

:func:`cancel_task` (``DELETE /tasks/{id}``) sets the task's cancel flag in Redis and purges its
delayed or retry definition. A purged definition means the task will not be published: it is
``cancelled`` at once. Otherwise the task is queued or running: a worker checks the flag before it
runs a task and stores ``cancelled`` instead of running it; a running task sees the flag through
:class:`Cancellation` and may stop (raising :class:`~app.errors.TaskCancelledError`).

Limits: a running task that never checks runs to its end (its result is stored as usual); a
periodic schedule is not cancelled this way (remove it from the code; the scheduler deletes it).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any

from taskiq import Context, TaskiqDepends, TaskiqResult

from app.errors import ResultNotFoundError, TaskCancelledError, TaskFinishedError
from app.lifecycle.definitions import DELAYED, RETRY, definition_subject

if TYPE_CHECKING:
    from app.broker import KiqBroker
    from app.results import KiqResultBackend

logger = logging.getLogger("kiqstack.lifecycle")

CANCELLED_ERROR = TaskCancelledError.__name__


class CancelOutcome(enum.StrEnum):
    """What a cancel request did."""

    #: It will never run (it was delayed or waiting for a retry, or was cancelled before).
    CANCELLED = "cancelled"
    #: It is queued or running: a worker drops it before it starts, a running task may stop.
    CANCELLING = "cancelling"


def is_cancelled_result(result: dict[str, Any] | None) -> bool:
    """Tell whether a stored result is a cancellation."""
    if not result or not result.get("is_err"):
        return False
    return (result.get("error") or {}).get("exc_type") == CANCELLED_ERROR


async def store_cancelled(results: KiqResultBackend[Any], task_id: str, task_name: str) -> None:
    """Store ``cancelled`` as a task's result (``wait_result`` returns it as an error)."""
    error = TaskCancelledError(f"task {task_id} ({task_name}) was cancelled")
    result: TaskiqResult[Any] = TaskiqResult(
        is_err=True, return_value=None, execution_time=0.0, error=error, labels={}
    )
    await results.set_result(task_id, result)


async def cancel_task(
    broker: KiqBroker, task_id: str, *, require_known: bool = False
) -> CancelOutcome:
    """Cancel a task (see the module docstring).

    :param broker: a started broker.
    :param task_id: the task's id.
    :param require_known: refuse an id Redis knows nothing about (the API does: a task it
        dispatched has a record; one sent with ``.kiq()`` has none until its result).
    :return: whether it is cancelled now or will be when a worker or the task sees it.
    :raises ResultNotFoundError: when no such task is known.
    :raises TaskFinishedError: when it already has a result (success or error).
    """
    results = broker.results
    record = await results.read_record(task_id)
    if require_known and not record.known:
        raise ResultNotFoundError(task_id=task_id)
    if record.result is not None:
        if is_cancelled_result(record.result):
            return CancelOutcome.CANCELLED
        status = "error" if record.result.get("is_err") else "success"
        raise TaskFinishedError(task_id=task_id, status=status)
    await results.lifecycle.request_cancel(task_id)
    settings = broker.settings
    purged = 0
    for kind in (DELAYED, RETRY):
        purged += await broker.transport.purge(definition_subject(settings, kind, task_id))
    if purged:
        await store_cancelled(results, task_id, record.task_name or "?")
        logger.info("task %s cancelled before it was published", task_id)
        return CancelOutcome.CANCELLED
    logger.info("task %s: cancel requested (queued or running)", task_id)
    return CancelOutcome.CANCELLING


class Cancellation:
    """A running task's view of its cancel flag (a taskiq dependency).

    ::

        @register_task()
        async def crunch(items: list[int], cancel: Cancellation = TaskiqDepends()) -> int:
            for item in items:
                await cancel.raise_if_cancelled()  # ends the task as "cancelled"
                ...
    """

    #: Seconds a checked flag is trusted before Redis is asked again.
    check_interval = 0.5

    def __init__(self, context: Context = TaskiqDepends()) -> None:  # noqa: B008
        """Bind to the running task (taskiq injects the context)."""
        self.context = context
        self._checked_at = float("-inf")
        self._cancelled = False

    @property
    def task_id(self) -> str:
        """The running task's id."""
        return self.context.message.task_id

    async def is_cancelled(self) -> bool:
        """Tell whether a cancel was requested (Redis is asked at most every ``check_interval``)."""
        if self._cancelled:
            return True
        now = asyncio.get_running_loop().time()
        if now - self._checked_at >= self.check_interval:
            self._checked_at = now
            backend: Any = self.context.broker.result_backend
            self._cancelled = await backend.lifecycle.cancel_requested(self.task_id)
        return self._cancelled

    async def raise_if_cancelled(self) -> None:
        """Raise :class:`~app.errors.TaskCancelledError` when a cancel was requested."""
        if await self.is_cancelled():
            raise TaskCancelledError(f"task {self.task_id} was cancelled while it ran")
