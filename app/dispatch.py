"""Queue a task whose arguments were checked: publish it and record it (API and ``kiq_once``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from app import metrics
from app.broker import KiqBroker
from app.errors import DispatchError, DispatchUnconfirmedError, PayloadTooLargeError
from app.redact import redact

logger = logging.getLogger("kiqstack.api")


async def dispatch(
    broker: KiqBroker,
    task: AsyncTaskiqDecoratedTask[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    task_id: str | None = None,
) -> str:
    """Publish a task and record it so its status reads ``queued``.

    Publishing again with the same ``task_id`` is safe within JetStream's duplicate window: the
    message id is the task id, so NATS drops the copy of a message it already stored.

    :param broker: the started broker.
    :param task: the registered task.
    :param args: positional arguments (already validated).
    :param kwargs: keyword arguments (already validated).
    :param task_id: the id to use (default: a new one).
    :return: the task id.
    :raises PayloadTooLargeError: when the message is over the size limit (nothing was sent).
    :raises DispatchUnconfirmedError: when NATS did not confirm in time (it may be queued).
    :raises DispatchError: when NATS did not take the message.
    """
    task_id = task_id or broker.id_generator()
    name = task.task_name
    kick = task.kicker().with_broker(broker).with_task_id(task_id).kiq(*args, **kwargs)
    record = broker.results.record_dispatch(task_id, name)
    outcomes = await asyncio.gather(kick, record, return_exceptions=True)
    kick_error = outcomes[0]
    if isinstance(kick_error, BaseException):
        await asyncio.gather(broker.results.forget_dispatch(task_id), return_exceptions=True)
        cause = kick_error.__cause__ if isinstance(kick_error, SendTaskError) else kick_error
        if isinstance(cause, PayloadTooLargeError):
            metrics.DISPATCH_ERRORS.labels(name, "too_large").inc()
            raise cause
        reason = redact(f"{type(cause).__name__}: {cause}".rstrip(": "))
        if isinstance(cause, TimeoutError):
            metrics.DISPATCH_ERRORS.labels(name, "unconfirmed").inc()
            raise DispatchUnconfirmedError(reason=reason) from kick_error
        metrics.DISPATCH_ERRORS.labels(name, "broker").inc()
        raise DispatchError(reason=reason) from kick_error
    if isinstance(outcomes[1], BaseException):
        # Queued, but GET /tasks/{id} answers 404 until the result is stored.
        logger.warning(
            "task %s (%s) is queued but its dispatch record could not be saved: %s",
            task_id,
            name,
            redact(f"{type(outcomes[1]).__name__}: {outcomes[1]}"),
        )
    metrics.TASKS_DISPATCHED.labels(name).inc()
    return task_id
