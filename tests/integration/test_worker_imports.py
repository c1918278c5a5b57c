"""A real worker process (``python -m app worker``) runs tasks without the web stack loaded."""

from __future__ import annotations

import pytest

from tests.support.stack import Stack, dispatch

pytestmark = [pytest.mark.integration, pytest.mark.process]

_MODULES = "app.tasks.example,tests.support.import_probe"


def test_worker_process_has_no_web_framework(stack: Stack) -> None:
    server = stack.role("server", TASK_MODULES=_MODULES)
    stack.role("worker", TASK_MODULES=_MODULES)
    # Run a task first, so the worker process has been through startup and a whole task.
    assert dispatch(server.probe_url, "app.tasks.example:add", 1, 2, wait=30).json()["result"] == 3
    body = dispatch(server.probe_url, "tests.web_stack_loaded", wait=30).json()
    assert body["status"] == "success", body
    assert body["result"] == []
