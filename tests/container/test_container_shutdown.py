"""`docker stop` of a worker while tasks run: they finish, or go to another worker. None is lost."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.stack import poll

pytestmark = pytest.mark.container

SLEEP = "app.tasks.example:sleep_task"
TASKS = 3


def dispatch_sleeps(api: str, seconds: float, count: int = TASKS) -> list[str]:
    ids = []
    for _ in range(count):
        answer = httpx.post(f"{api}/tasks/{SLEEP}", json={"args": [seconds]}, timeout=10)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["task_id"])
    return ids


def wait_started(worker, count: int, metric_value, timeout: float = 30) -> None:
    """Until the worker reports ``count`` tasks started."""
    poll(
        lambda: (
            metric_value(worker.metrics, "kiqstack_tasks_received_total", task_name=SLEEP) >= count
            or None
        ),
        timeout,
        lambda: f"{worker.name} did not start {count} tasks:\n{worker.logs()}",
    )


def statuses(api: str, ids: list[str]) -> list[str]:
    return [httpx.get(f"{api}/tasks/{i}", timeout=5).json()["status"] for i in ids]


def test_stop_lets_running_tasks_finish(containers, wait_status, metric_value, observe):
    """WORKER_SHUTDOWN_TIMEOUT longer than the tasks: SIGTERM drains, the tasks complete."""
    task_seconds = 4.0
    server = containers.start("server")
    worker = containers.start(
        "worker", env={"WORKER_SHUTDOWN_TIMEOUT": "20", "ACK_WAIT_SECONDS": "30"}
    )
    server.wait_ready(server.api)
    worker.wait_ready(worker.metrics)

    ids = dispatch_sleeps(server.api, task_seconds)
    wait_started(worker, TASKS, metric_value)
    seconds, code = worker.stop(timeout=60)
    observe(f"graceful: docker stop took {seconds:.1f}s, exit code {code}")

    assert code == 0, worker.logs()
    assert seconds < task_seconds + 15, "stop waits for the tasks, not for docker's SIGKILL"
    # No other worker exists: the stopped one finished and saved every result before it exited.
    assert statuses(server.api, ids) == ["success"] * TASKS, worker.logs()
    for task_id in ids:
        # The task slept its full time (not cut short); an event loop timer may fire up to one
        # clock tick early (uvloop: 1 ms), so 4.0 s can read 3.999.
        assert wait_status(server.api, task_id)["result"] >= task_seconds - 0.01


def test_stop_redelivers_unfinished_tasks_to_another_worker(
    containers, wait_status, metric_value, observe
):
    """WORKER_SHUTDOWN_TIMEOUT shorter than the tasks: they are redelivered to a second worker."""
    # Shorter than ACK_WAIT_SECONDS, so the second worker finishes each task before JetStream
    # would deliver it yet again; longer than WORKER_SHUTDOWN_TIMEOUT, so the first one gives up.
    task_seconds = 4.0
    worker_env = {"WORKER_SHUTDOWN_TIMEOUT": "1", "ACK_WAIT_SECONDS": "5"}
    server = containers.start("server")
    first = containers.start("worker", env=worker_env)
    server.wait_ready(server.api)
    first.wait_ready(first.metrics)

    ids = dispatch_sleeps(server.api, task_seconds)
    wait_started(first, TASKS, metric_value)
    stopped_at = time.monotonic()
    seconds, code = first.stop(timeout=60)
    observe(f"redelivery: docker stop of the first worker took {seconds:.1f}s, exit code {code}")
    assert statuses(server.api, ids) == ["queued"] * TASKS, "nothing finished on the first worker"

    second = containers.start("worker", env=worker_env)
    second.wait_ready(second.metrics)
    results = [wait_status(server.api, task_id, timeout=90) for task_id in ids]
    took = time.monotonic() - stopped_at
    observe(f"redelivery: all {TASKS} tasks done on the second worker {took:.1f}s after the stop")
    assert [r["status"] for r in results] == ["success"] * TASKS, results
    assert metric_value(second.metrics, "kiqstack_tasks_succeeded_total", task_name=SLEEP) >= TASKS
    redeliveries = metric_value(second.metrics, "kiqstack_task_redeliveries_total", task_name=SLEEP)
    observe(f"redelivery: the second worker counted {redeliveries:.0f} redeliveries")
