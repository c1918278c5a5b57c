"""kiqstack as real processes: roles, crashes, restarts, shutdown, Redis outages, dead letters."""

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

from scripts.localinfra import nats_server, redis_server
from tests.support.stack import Stack, dispatch, metric_value, result_of, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.process]


def test_server_and_worker_processes(stack: Stack) -> None:
    server = stack.role("server")
    worker = stack.role("worker")
    response = dispatch(server.probe_url, "app.tasks.example:add", 40, 2, wait=30)
    assert response.status_code == 200
    assert response.json()["result"] == 42
    failed = dispatch(server.probe_url, "app.tasks.example:risky_task", wait=30).json()
    assert failed["error"] == {"type": "ValueError", "message": "Something went wrong"}
    page = worker.metrics()
    add = "app.tasks.example:add"
    assert metric_value(page, "kiqstack_tasks_received_total", task_name=add) == 1
    assert metric_value(page, "kiqstack_tasks_succeeded_total", task_name=add) == 1
    risky = "app.tasks.example:risky_task"
    assert metric_value(page, "kiqstack_tasks_failed_total", task_name=risky) == 1
    assert metric_value(page, "kiqstack_task_duration_seconds_count", task_name=add) == 1
    assert metric_value(page, "kiqstack_task_queue_wait_seconds_count", task_name=add) == 1
    assert metric_value(page, "kiqstack_tasks_in_flight") == 0
    for name in ("kiqstack_queue_pending", "kiqstack_queue_ack_pending"):
        assert metric_value(page, name) >= 0
    assert "task finished id=" in worker.logs()
    assert "outcome=error error=ValueError: Something went wrong" in worker.logs()
    assert httpx.get(f"{worker.probe_url}/livez").text == "ok\n"


def test_both_mode_serves_and_executes(stack: Stack) -> None:
    both = stack.role("both")
    response = dispatch(both.probe_url, "app.tasks.example:example_task", "x", 1, wait=30)
    assert response.json()["result"] == "Processed: x, 1"
    assert httpx.get(f"http://127.0.0.1:{both.metrics_port}/readyz").status_code == 200
    both.signal(signal.SIGTERM)
    assert both.wait(30) == 0


def test_both_mode_stops_when_a_child_dies(stack: Stack) -> None:
    both = stack.role("both")
    children = subprocess.run(
        ["pgrep", "-P", str(both.process.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    server_pid = next(
        int(pid)
        for pid in children
        if b"server" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    )
    os.kill(server_pid, signal.SIGKILL)
    assert both.wait(60) != 0
    assert "server exited with code" in both.logs()


def test_kill_9_mid_task_is_redelivered(stack: Stack) -> None:
    stack.base_env["ACK_WAIT_SECONDS"] = "3"
    server = stack.role("server")
    doomed = stack.role("worker")
    task_id = dispatch(server.probe_url, "app.tasks.example:sleep_task", 2).json()["task_id"]
    wait_for_log(doomed, f"task started id={task_id}")
    doomed.kill_group()
    survivor = stack.role("worker")
    body = result_of(server.probe_url, task_id)
    assert body["status"] == "success"
    assert body["result"] >= 2
    assert f"task started id={task_id}" in survivor.logs()
    sleep = "app.tasks.example:sleep_task"
    assert (
        metric_value(survivor.metrics(), "kiqstack_task_redeliveries_total", task_name=sleep) == 1
    )


def test_task_longer_than_ack_wait_runs_once(stack: Stack) -> None:
    """Running tasks are kept alive: a long task is not redelivered to an idle second worker."""
    stack.base_env["ACK_WAIT_SECONDS"] = "2"
    server = stack.role("server")
    first = stack.role("worker")
    second = stack.role("worker")
    task_id = dispatch(server.probe_url, "app.tasks.example:sleep_task", 5).json()["task_id"]
    body = result_of(server.probe_url, task_id)
    assert body["status"] == "success"
    assert body["result"] >= 5
    started = f"task started id={task_id}"
    assert first.logs().count(started) + second.logs().count(started) == 1
    for worker in (first, second):
        with pytest.raises(KeyError):  # no redelivery was ever counted
            metric_value(worker.metrics(), "kiqstack_task_redeliveries_total")


def test_worker_survives_nats_restart(stack: Stack, tmp_path: Path) -> None:
    nats = (
        nats_server(tmp_path / "own-nats").start()
        if (tmp_path / "own-nats").mkdir() is None
        else None
    )
    assert nats is not None
    try:
        stack.base_env["NATS_URL"] = f"nats://127.0.0.1:{nats.port}"
        worker = stack.role("worker")
        nats.stop()
        time.sleep(3)  # the worker idles, its pull request lost with the server
        nats.start()
        server = stack.role("server")
        response = dispatch(server.probe_url, "app.tasks.example:add", 1, 2, wait=30)
        assert response.status_code == 200, worker.logs()
        assert response.json()["result"] == 3
    finally:
        nats.stop()


def test_sigterm_lets_the_running_task_finish(stack: Stack) -> None:
    stack.base_env["WORKER_SHUTDOWN_TIMEOUT"] = "20"
    server = stack.role("server")
    worker = stack.role("worker")
    task_id = dispatch(server.probe_url, "app.tasks.example:sleep_task", 2).json()["task_id"]
    wait_for_log(worker, f"task started id={task_id}")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert f"task finished id={task_id}" in worker.logs()
    body = result_of(server.probe_url, task_id, timeout=5)
    assert body["status"] == "success"


def test_sigterm_past_the_timeout_redelivers(stack: Stack) -> None:
    stack.base_env.update({"WORKER_SHUTDOWN_TIMEOUT": "1", "ACK_WAIT_SECONDS": "4"})
    server = stack.role("server")
    first = stack.role("worker")
    task_id = dispatch(server.probe_url, "app.tasks.example:sleep_task", 3).json()["task_id"]
    wait_for_log(first, f"task started id={task_id}")
    first.signal(signal.SIGTERM)
    first.wait(30)
    assert f"task finished id={task_id}" not in first.logs()
    second = stack.role("worker")
    body = result_of(server.probe_url, task_id)
    assert body["status"] == "success"
    assert f"task finished id={task_id}" in second.logs()


def test_result_not_lost_when_redis_is_down(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "own-redis").mkdir()
    redis = redis_server(tmp_path / "own-redis").start()
    try:
        stack.base_env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
        stack.base_env["REDELIVERY_DELAY_SECONDS"] = "1"
        server = stack.role("server")
        worker = stack.role("worker")
        task_id = dispatch(server.probe_url, "app.tasks.example:sleep_task", 1.5).json()["task_id"]
        wait_for_log(worker, f"task started id={task_id}")
        redis.stop()
        wait_for_log(worker, "could not be saved")
        redis.start()
        body = result_of(server.probe_url, task_id, redis_restarts=True)
        assert body["status"] == "success"
        page = worker.metrics()
        assert metric_value(page, "kiqstack_tasks_given_back_total", reason="result-not-saved") >= 1
        sleep = "app.tasks.example:sleep_task"
        assert metric_value(page, "kiqstack_task_redeliveries_total", task_name=sleep) >= 1
    finally:
        redis.stop()


def _dlq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.base_env}
    return subprocess.run(
        [sys.executable, "-m", "app", "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unknown_task_is_given_back_then_dead_lettered_and_replayed(stack: Stack) -> None:
    stack.base_env["MAX_DELIVER"] = "3"
    new = stack.role("server", TASK_MODULES="app.tasks.example,tests.support.extra_tasks")
    old = stack.role("worker")  # knows only app.tasks.example
    task_id = dispatch(new.probe_url, "tests.new_feature", 4).json()["task_id"]
    wait_for_log(old, "dead-lettered message")
    assert "is not registered in this worker (delivery 1 of 3)" in old.logs()
    page = old.metrics()
    assert metric_value(page, "kiqstack_tasks_given_back_total", reason="unknown-task") == 3
    assert metric_value(page, "kiqstack_tasks_dead_lettered_total", reason="unknown-task") == 1
    listed = _dlq(stack, "list")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(x["task_id"], x["task_name"], x["reason"], x["deliveries"]) for x in letters] == [
        (task_id, "tests.new_feature", "unknown-task", 3)
    ]
    assert letters[0]["args"] == [4]
    # A worker that knows the task arrives; the dead letter is replayed to it.
    old.stop()
    stack.role("worker", TASK_MODULES="app.tasks.example,tests.support.extra_tasks")
    replay = _dlq(stack, "replay", "--all")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 message(s)" in replay.stdout
    body = result_of(new.probe_url, task_id)
    assert body["status"] == "success"
    assert body["result"] == 40
    assert _dlq(stack, "list").stdout == ""


def test_crash_looping_task_is_dead_lettered(stack: Stack) -> None:
    stack.base_env.update({"MAX_DELIVER": "2", "ACK_WAIT_SECONDS": "2"})
    server = stack.role("server")
    task_id = dispatch(server.probe_url, "app.tasks.example:sleep_task", 30).json()["task_id"]
    for _ in range(2):  # every attempt dies with its worker
        worker = stack.role("worker")
        wait_for_log(worker, f"task started id={task_id}", timeout=20)
        worker.kill_group()
    last = stack.role("worker")
    wait_for_log(last, "dead-lettered message", timeout=20)
    assert "reason max-deliver" in last.logs()
    letters = [json.loads(line) for line in _dlq(stack, "list").stdout.splitlines()]
    assert [(x["task_id"], x["reason"], x["deliveries"]) for x in letters] == [
        (task_id, "max-deliver", 3)
    ]


def test_worker_processes_share_one_metrics_page(stack: Stack) -> None:
    server = stack.role("server")
    worker = stack.role("worker", WORKER_PROCESSES="2")
    for i in range(20):
        assert dispatch(server.probe_url, "app.tasks.example:add", i, 1, wait=30).status_code == 200
    page = worker.metrics()
    add = "app.tasks.example:add"
    assert metric_value(page, "kiqstack_tasks_received_total", task_name=add) == 20
    assert metric_value(page, "kiqstack_tasks_succeeded_total", task_name=add) == 20


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RUN_MODE": "sideways"}, "valid RUN_MODE values: server, worker, both"),
        ({"PORT": "http"}, "PORT"),
        ({"NATS_URL": "http://x"}, "NATS_URL"),
        ({"MAX_DELIVER": "0"}, "MAX_DELIVER"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ],
)
def test_bad_settings_exit_with_a_message(env: dict[str, str], fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert fragment in result.stderr
    assert result.stderr.startswith("kiqstack: invalid configuration")


def test_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--help"], capture_output=True, text=True, check=True
    )
    for word in ("server", "worker", "both", "dlq", "RUN_MODE"):
        assert word in result.stdout
