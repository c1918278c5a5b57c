"""Delayed tasks from Python: run a task in some seconds, or at a time.

::

    await kiq_in(send_report, 3600, "weekly")                  # in an hour
    await kiq_at(send_report, datetime(2030, 1, 1, 9, tzinfo=ZoneInfo("Europe/Berlin")), "new-year")
    await send_report.kicker().with_labels(delay=30).kiq("x")  # the same, with taskiq's label

The task is stored in NATS as an ``@at`` schedule definition (file storage): it survives restarts of
NATS and of every kiqstack process, needs no scheduler process, and fires 0 to about 0.3 s after
it is due (never early). Until then ``GET /tasks/{id}`` reads ``scheduled``; ``cancel_task`` (or
``DELETE /tasks/{id}``) removes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from taskiq import AsyncTaskiqTask
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from app.errors import ScheduleError
from app.lifecycle.definitions import DELAY_LABEL, ETA_LABEL, parse_eta

_ReturnT = TypeVar("_ReturnT")


async def kiq_in(
    task: AsyncTaskiqDecoratedTask[Any, _ReturnT], seconds: float, *args: Any, **kwargs: Any
) -> AsyncTaskiqTask[_ReturnT]:
    """Dispatch a task to run ``seconds`` from now.

    :param task: a registered task.
    :param seconds: 0 to ``MAX_SCHEDULE_DELAY_SECONDS``.
    :return: the task handle (``wait_result`` waits for the run).
    :raises ScheduleError: on a negative or too long delay (nothing is sent).
    """
    return await _send(task, {DELAY_LABEL: float(seconds)}, args, kwargs)


async def kiq_at(
    task: AsyncTaskiqDecoratedTask[Any, _ReturnT], when: datetime, *args: Any, **kwargs: Any
) -> AsyncTaskiqTask[_ReturnT]:
    """Dispatch a task to run at ``when``.

    :param task: a registered task.
    :param when: an aware time (a naive one is refused).
    :return: the task handle.
    :raises ScheduleError: on a naive, past or too far time (nothing is sent).
    """
    due = parse_eta(when)
    return await _send(task, {ETA_LABEL: due.isoformat()}, args, kwargs)


async def _send(
    task: AsyncTaskiqDecoratedTask[Any, _ReturnT],
    labels: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncTaskiqTask[_ReturnT]:
    try:
        return await task.kicker().with_labels(**labels).kiq(*args, **kwargs)
    except SendTaskError as exc:
        if isinstance(exc.__cause__, ScheduleError):
            raise exc.__cause__ from None
        raise
