"""The broker every kiqstack process shares, ``@register_task()``, and :func:`build_broker`.

This module is the seed's interface: ``taskiq worker app.tasks.broker:broker app.tasks.example``.
Importing it does no I/O: the broker connects in ``startup()``, reading settings from the
environment (or from :meth:`KiqBroker.configure`). :func:`build_broker` makes another broker wired
the same way, for a process or a test that wants its own (``create_app(settings, broker=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from taskiq import TaskiqEvents
from taskiq.decor import AsyncTaskiqDecoratedTask

from app.broker import KiqBroker
from app.config import Settings
from app.lifecycle.periodic import periodic
from app.lifecycle.retries import RetryMiddleware
from app.queues import DEFAULT_QUEUE, QUEUE_LABEL, check_queue
from app.results import KiqResultBackend
from app.tasks.builtin import register_builtin_tasks
from app.transport import TransportFactory
from app.worker import TaskMetricsMiddleware, on_worker_shutdown, on_worker_startup

_P = ParamSpec("_P")
_ReturnT = TypeVar("_ReturnT")


def build_broker(
    settings: Settings | None = None,
    *,
    transport: TransportFactory | None = None,
    result_backend: KiqResultBackend[Any] | None = None,
) -> KiqBroker:
    """Build a broker wired as every kiqstack process needs it; nothing is read or connected yet.

    It has the task metrics middleware, the worker's startup and shutdown handlers (logging, probes
    and ``/metrics``, queue depth) and the built-in ``kiqstack.*`` tasks.

    :param settings: settings to use (default: read from the environment at startup).
    :param transport: makes the transport from the settings (default: JetStream).
    :param result_backend: the result backend (default: Redis on ``REDIS_URL``).
    :return: the broker.
    """
    new = KiqBroker(settings, transport=transport).with_middlewares(
        TaskMetricsMiddleware(), RetryMiddleware()
    )
    if result_backend is not None:
        new.with_result_backend(result_backend)
    new.state.kiqstack_broker = new
    new.add_event_handler(TaskiqEvents.WORKER_STARTUP, on_worker_startup)
    new.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, on_worker_shutdown)
    register_builtin_tasks(new)  # kiqstack.ping / kiqstack.echo, whatever TASK_MODULES says
    return new


broker = build_broker()


def register_task(
    task_name: str | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    retry_on: tuple[type[BaseException], ...] | None = None,
    schedule: list[dict[str, Any]] | None = None,
    **labels: Any,
) -> Callable[[Callable[_P, _ReturnT]], AsyncTaskiqDecoratedTask[_P, _ReturnT]]:
    """Register a function as a task of the shared broker.

    The default name is ``module:function`` (``app.tasks.example:example_task``); pass
    ``task_name=`` to pin a name that survives moving the function. Labels (for example
    ``timeout=30``) travel with every message.

    A task goes to its queue (:mod:`app.queues`): only workers whose ``WORKER_QUEUES`` name it run
    it; until one does, it waits in that queue's own consumer.

    Retries (:mod:`app.lifecycle.retries`): ``retry_on_error=True``, ``max_retries=3``,
    ``retry_backoff=1.0``, ``retry_backoff_max=600``, ``retry_jitter=True``, and ``retry_on``.

    :param task_name: explicit task name.
    :param queue: the queue: 1 to 32 of ``a-z0-9_-``, starting with a letter or a digit.
    :param retry_on: only these exception types retry (default: any); kept in the worker, like
        taskiq's ``types_of_exceptions`` label.
    :param schedule: periodic schedules of the task, each the keyword arguments of
        :func:`app.lifecycle.periodic.periodic` (``{"every": 60}``, ``{"cron": "0 9 * * *",
        "tz": "Europe/Berlin"}``); the scheduler role keeps them in NATS.
    :param labels: taskiq labels.
    :return: a decorator returning the task (call ``.kiq(...)`` on it).
    :raises InvalidQueueError: at once, when ``queue`` is not a valid queue name.
    """
    check_queue(queue)
    if queue != DEFAULT_QUEUE:
        labels[QUEUE_LABEL] = queue
    if retry_on is not None:
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on
        ):
            raise TypeError("retry_on must be a tuple of exception types")
        labels["types_of_exceptions"] = retry_on
    register: Callable[[Callable[_P, _ReturnT]], AsyncTaskiqDecoratedTask[_P, _ReturnT]]
    register = broker.task(task_name=task_name, **labels)
    declarations = [periodic(**spec) for spec in schedule or []]

    def decorator(func: Callable[_P, _ReturnT]) -> AsyncTaskiqDecoratedTask[_P, _ReturnT]:
        task: AsyncTaskiqDecoratedTask[_P, _ReturnT] = register(func)
        for declare in declarations:
            declare(task)
        return task

    return decorator
