"""``LOG_FORMAT=json``: every line of every role is one JSON object, as real processes."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support.logcheck import json_records
from tests.support.stack import Stack, dispatch, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.process]


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


def test_every_line_of_every_role_is_json(stack: Stack) -> None:
    stack.base_env["LOG_FORMAT"] = "json"
    server = stack.role("server")
    worker = stack.role("worker", WORKER_PROCESSES="2")
    both = stack.role("both")
    for base in (server.probe_url, both.probe_url):
        assert dispatch(base, "app.tasks.example:add", 1, 2, wait=30).json()["result"] == 3
        assert dispatch(base, "app.tasks.example:risky_task", wait=30).json()["status"] == "error"
    # taskiq's process manager restarts a worker process that died: its lines are JSON too.
    os.kill(_children(worker.process.pid)[0], signal.SIGKILL)
    wait_for_log(worker, "is dead")
    wait_for_log(worker, "restarted with pid")
    for role in (server, worker, both):
        role.signal(signal.SIGTERM)
    for role in (server, worker, both):
        assert role.wait(40) == 0
    loggers: set[str] = set()
    for role in (server, worker, both):
        records = json_records(role.logs())
        assert records, f"{role.role} logged nothing"
        loggers |= {record["logger"] for record in records}
        for record in records:
            assert {"time", "level", "logger", "message"} <= set(record)
    # taskiq's own loggers (its process manager and its receiver), uvicorn's and kiqstack's
    for name in ("taskiq.process-manager", "taskiq.receiver.receiver", "uvicorn.error"):
        assert name in loggers
    failures = [
        record
        for role in (worker, both)
        for record in json_records(role.logs())
        if record["logger"] == "taskiq.receiver.receiver" and record["level"] == "ERROR"
    ]
    assert failures, "the failing task's traceback was not logged"
    for record in failures:  # the traceback is a field of the record, not lines of its own
        assert "ValueError: Something went wrong" in record["exception"]
        assert record["exception"].startswith("Traceback (most recent call last):")
