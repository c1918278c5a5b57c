"""``kiqstack.ping`` and ``kiqstack.echo`` work in processes that import no task module at all."""

from __future__ import annotations

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.process]


def test_builtin_tasks_without_task_modules(stack: Stack) -> None:
    # The chart's default once the example tasks are opt-in: TASK_MODULES names no module.
    server = stack.role("server", TASK_MODULES="")
    stack.role("worker", TASK_MODULES="")
    names = {task["name"] for task in httpx.get(f"{server.probe_url}/tasks").json()}
    assert names == {"kiqstack.ping", "kiqstack.echo"}
    ping = httpx.post(f"{server.probe_url}/tasks/kiqstack.ping?wait=20", timeout=30)
    assert ping.json()["result"] == "pong"
    echo = httpx.post(
        f"{server.probe_url}/tasks/kiqstack.echo?wait=20",
        json={"args": [{"nested": [1, 2.5, None, "x"]}]},
        timeout=30,
    )
    assert echo.json()["result"] == {"nested": [1, 2.5, None, "x"]}
    missing = httpx.post(f"{server.probe_url}/tasks/app.tasks.example:add", json={"args": [1, 2]})
    assert missing.status_code == 404
