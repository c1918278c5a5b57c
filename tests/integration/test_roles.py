"""Role details as real processes: the seed's worker command, server drain, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.process]


def _wait_result(base: str, task: str, *args) -> httpx.Response:
    return httpx.post(
        f"{base}/tasks/{task}", json={"args": list(args)}, params={"wait": 30}, timeout=60
    )


@pytest.mark.parametrize("extra", [[], ["--reload"]], ids=["plain", "reload"])
def test_seed_worker_command(stack: Stack, tmp_path: Path, extra: list[str]) -> None:
    """``taskiq worker app.tasks.broker:broker app.tasks.example`` works as the seed says."""
    server = stack.role("server")
    env = {**os.environ, **stack.base_env}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "seed-worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "app.tasks.broker:broker",
            "app.tasks.example",
            "--workers",
            "1",
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        response = _wait_result(server.probe_url, "app.tasks.example:example_task", "seed", 1)
        assert response.status_code == 200, (tmp_path / "seed-worker.log").read_text()
        assert response.json()["result"] == "Processed: seed, 1"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


def test_server_drains_before_closing(stack: Stack) -> None:
    server = stack.role("server", SHUTDOWN_DELAY_SECONDS="2")
    assert httpx.get(f"{server.probe_url}/readyz").status_code == 200
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    draining = httpx.get(f"{server.probe_url}/readyz")
    assert draining.status_code == 503
    assert draining.json()["checks"]["server"] == "draining"
    assert httpx.get(f"{server.probe_url}/livez").status_code == 200  # still serving
    assert server.wait(20) == 0
    assert "closing in 2.0s" in server.logs()


def test_json_logs(stack: Stack) -> None:
    server = stack.role("server", LOG_FORMAT="json")
    worker = stack.role("worker", LOG_FORMAT="json")
    task_id = _wait_result(server.probe_url, "app.tasks.example:add", 1, 2).json()["task_id"]
    lines = [line for line in worker.logs().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    finish = [r for r in records if r.get("event") == "finish" and r.get("task_id") == task_id]
    assert len(finish) == 1
    assert finish[0]["task_name"] == "app.tasks.example:add"
    assert finish[0]["outcome"] == "success"
    assert finish[0]["duration"] >= 0
    assert finish[0]["level"] == "INFO"
