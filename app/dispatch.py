"""Queue a task whose arguments were checked: publish it and record it (API and ``kiq_once``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from app import metrics
from app.broker import KiqBroker
from app.errors import (
    DispatchError,
    DispatchUnconfirmedError,
    PayloadTooLargeError,
    ScheduleError,
)
from app.queues import queue_of
from app.redact import redact

logger = logging.getLogger("kiqstack.api")


async def dispatch(
    broker: KiqBroker,
    task: AsyncTaskiqDecoratedTask[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    task_id: str | None = None,
    labels: dict[str, Any] | None = None,
) -> str:
    """Record a task (with its queue) so its status reads ``queued``, then publish it.

    The record comes first: a task whose record cannot be saved is not queued at all
    (:class:`DispatchError`), so ``GET /tasks/{id}`` never answers 404 for a queued task.

    Publishing again with the same ``task_id`` is safe within JetStream's duplicate window: the
    message id is the task id, so NATS drops the copy of a message it already stored.

    :param broker: the started broker.
    :param task: the registered task.
    :param args: positional arguments (already validated).
    :param kwargs: keyword arguments (already validated).
    :param task_id: the id to use (default: a new one).
    :param labels: extra labels (``delay`` or ``eta``: a delayed task, :mod:`app.lifecycle`).
    :return: the task id.
    :raises PayloadTooLargeError: when the message is over the size limit (nothing was sent).
    :raises DispatchUnconfirmedError: when NATS did not confirm in time (it may be queued).
    :raises DispatchError: when NATS did not take the message, or Redis did not take its record
        (then nothing was sent).
    """
    task_id = task_id or broker.id_generator()
    name = task.task_name
    queue = queue_of(task.labels)
    try:
        # First the record, then the message: a task is never queued without it, so
        # GET /tasks/{id} never answers 404 for a task that is queued.
        await broker.results.record_dispatch(task_id, name, queue)
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
        logger.warning(
            "task %s (%s) not queued: its dispatch record could not be saved: %s",
            task_id,
            name,
            reason,
        )
        metrics.DISPATCH_ERRORS.labels(name, queue, "result_store").inc()
        raise DispatchError(
            reason=f"the result store (Redis) did not record it ({reason}); nothing was queued"
        ) from exc
    try:
        kicker = task.kicker().with_broker(broker).with_task_id(task_id)
        if labels:
            kicker = kicker.with_labels(**labels)
        await kicker.kiq(*args, **kwargs)
    except Exception as kick_error:
        await asyncio.gather(broker.results.forget_dispatch(task_id), return_exceptions=True)
        cause = kick_error.__cause__ if isinstance(kick_error, SendTaskError) else kick_error
        if isinstance(cause, PayloadTooLargeError):
            metrics.DISPATCH_ERRORS.labels(name, queue, "too_large").inc()
            raise cause from None
        if isinstance(cause, ScheduleError):
            metrics.DISPATCH_ERRORS.labels(name, "bad_schedule").inc()
            raise cause from None
        reason = redact(f"{type(cause).__name__}: {cause}".rstrip(": "))
        if isinstance(cause, TimeoutError):
            metrics.DISPATCH_ERRORS.labels(name, queue, "unconfirmed").inc()
            raise DispatchUnconfirmedError(reason=reason) from kick_error
        metrics.DISPATCH_ERRORS.labels(name, queue, "broker").inc()
        raise DispatchError(reason=reason) from kick_error
    metrics.TASKS_DISPATCHED.labels(name, queue).inc()
    return task_id
