"""The broker every kiqstack process shares, and the ``@register_task()`` decorator.

This module is the seed's interface: ``taskiq worker app.tasks.broker:broker app.tasks.example``.
Importing it does no I/O: the broker connects in ``startup()``, reading settings from the
environment (or from :meth:`KiqBroker.configure`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from taskiq import TaskiqEvents
from taskiq.decor import AsyncTaskiqDecoratedTask

from app.broker import KiqBroker
from app.tasks.builtin import register_builtin_tasks
from app.worker import TaskMetricsMiddleware, on_worker_shutdown, on_worker_startup

_P = ParamSpec("_P")
_ReturnT = TypeVar("_ReturnT")

broker = KiqBroker().with_middlewares(TaskMetricsMiddleware())
broker.state.kiqstack_broker = broker
broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, on_worker_startup)
broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, on_worker_shutdown)
register_builtin_tasks(broker)  # kiqstack.ping / kiqstack.echo, whatever TASK_MODULES says


def register_task(
    task_name: str | None = None, **labels: Any
) -> Callable[[Callable[_P, _ReturnT]], AsyncTaskiqDecoratedTask[_P, _ReturnT]]:
    """Register a function as a task of the shared broker.

    The default name is ``module:function`` (``app.tasks.example:example_task``); pass
    ``task_name=`` to pin a name that survives moving the function. Labels (for example
    ``timeout=30``) travel with every message.

    :param task_name: explicit task name.
    :param labels: taskiq labels.
    :return: a decorator returning the task (call ``.kiq(...)`` on it).
    """
    decorator: Callable[[Callable[_P, _ReturnT]], AsyncTaskiqDecoratedTask[_P, _ReturnT]]
    decorator = broker.task(task_name=task_name, **labels)
    return decorator
