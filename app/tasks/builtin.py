"""Tasks every kiqstack process registers, whatever ``TASK_MODULES`` says.

They cost nothing and touch nothing, so a deployment without the example tasks still has a task
to check the whole path with (the chart's ``helm test``, monitoring, a smoke test):

* ``kiqstack.ping()`` returns ``"pong"``;
* ``kiqstack.echo(value)`` returns ``value`` (any JSON; the message size limit applies).
"""

from __future__ import annotations

from typing import Any

from taskiq import AsyncBroker

PING = "kiqstack.ping"
ECHO = "kiqstack.echo"


async def ping() -> str:
    """Answer ``"pong"``: the round trip API → NATS → worker → Redis works."""
    return "pong"


async def echo(value: Any) -> Any:
    """Return the value it was given."""
    return value


def register_builtin_tasks(broker: AsyncBroker) -> None:
    """Register ``kiqstack.ping`` and ``kiqstack.echo`` on a broker (once).

    :param broker: the broker every kiqstack process shares.
    """
    for name, func in ((PING, ping), (ECHO, echo)):
        if broker.find_task(name) is None:
            broker.register_task(func, task_name=name)
