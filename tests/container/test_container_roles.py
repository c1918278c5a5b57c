"""Server and worker containers (and `both`) against real NATS JetStream and Redis."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.container.conftest import dispatch

pytestmark = pytest.mark.container

ADD = "app.tasks.example:add"
RISKY = "app.tasks.example:risky_task"
UID = 10001


@pytest.fixture(scope="module")
def pair(module_containers):
    """One server and one worker container, both ready."""
    server = module_containers.start("server")
    worker = module_containers.start("worker")
    server.wait_ready(server.api)
    worker.wait_ready(worker.metrics)
    return server, worker


def test_dispatch_and_poll_result(pair, wait_status):
    server, _ = pair
    answer = dispatch(server.api, ADD, 2, 3)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["task_name"] == ADD
    assert body["status_url"] == f"/tasks/{body['task_id']}"
    status = wait_status(server.api, body["task_id"])
    assert status["status"] == "success", status
    assert status["result"] == 5
    assert status["error"] is None


def test_dispatch_and_wait(pair):
    server, _ = pair
    answer = dispatch(server.api, ADD, wait=20, a=1.5, b=2)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "success"
    assert answer.json()["result"] == 3.5


def test_error_is_captured(pair, wait_status):
    server, _ = pair
    answer = dispatch(server.api, RISKY)
    assert answer.status_code == 202, answer.text
    status = wait_status(server.api, answer.json()["task_id"])
    assert status["status"] == "error", status
    assert status["error"] == {"type": "ValueError", "message": "Something went wrong"}


def test_api_metrics(pair, wait_status, metric_value):
    server, _ = pair
    answer = dispatch(server.api, ADD, 1, 1)
    wait_status(server.api, answer.json()["task_id"])
    # The server's metrics are on METRICS_PORT (port name http-metrics), never on the API port.
    assert metric_value(server.metrics, "kiqstack_tasks_dispatched_total", task_name=ADD) >= 1
    assert metric_value(server.metrics, "kiqstack_http_requests_total") >= 1
    assert httpx.get(f"{server.api}/metrics", timeout=5).status_code == 404


def test_worker_metrics_and_probes(pair, wait_status, metric_value):
    server, worker = pair
    ok = dispatch(server.api, ADD, 4, 4)
    bad = dispatch(server.api, RISKY)
    wait_status(server.api, ok.json()["task_id"])
    wait_status(server.api, bad.json()["task_id"])
    assert httpx.get(f"{worker.metrics}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{worker.metrics}/readyz", timeout=5).status_code == 200
    assert metric_value(worker.metrics, "kiqstack_tasks_succeeded_total", task_name=ADD) >= 1
    assert metric_value(worker.metrics, "kiqstack_tasks_failed_total", task_name=RISKY) >= 1


def test_docs_work_offline(pair):
    """/docs names no other host; its Swagger UI assets ship in the image and are served."""
    server, _ = pair
    html = httpx.get(f"{server.api}/docs", timeout=10).text
    assert re.search(r"https?:", html) is None, html
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html)
    assert len(assets) == 3, html
    for asset in assets:
        answer = httpx.get(f"{server.api}{asset}", timeout=10)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 1000, asset


@pytest.mark.parametrize("role", ["server", "worker"])
def test_runs_hardened(pair, docker, role):
    """Non-root UID/GID, no capabilities, read-only root; only /tmp is writable."""
    container = pair[0] if role == "server" else pair[1]
    host = docker.inspect(container.name)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]

    status = container.exec("cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == [str(UID)] * 4
    assert fields["Gid"].split() == [str(UID)] * 4
    assert int(fields["CapEff"], 16) == 0
    assert int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    # PID 1 is Python itself (exec form + exec in the entrypoint), not a shell.
    cmdline = container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert "python" in cmdline[0], cmdline

    # Every process of the container runs as the app user.
    uids = container.exec("sh", "-c", "cat /proc/[0-9]*/status | grep '^Uid:'").stdout
    assert {line.split()[1] for line in uids.splitlines()} == {str(UID)}

    assert container.exec("touch", "/app/app/x").returncode != 0, "root filesystem is read-only"
    assert container.exec("touch", "/tmp/x").returncode == 0, "/tmp is writable"


def test_both_mode_serves_and_executes(containers, metric_value):
    both = containers.start("both")
    both.wait_ready(both.api)
    both.wait_ready(both.metrics)
    answer = dispatch(both.api, ADD, 20, 22, wait=20)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == 42
    assert metric_value(both.metrics, "kiqstack_tasks_succeeded_total", task_name=ADD) >= 1
    # RUN_MODE=both: the worker keeps METRICS_PORT, the server takes METRICS_PORT + 1.
    server_metrics = f"http://127.0.0.1:{both.metrics_port + 1}"
    assert metric_value(server_metrics, "kiqstack_tasks_dispatched_total", task_name=ADD) >= 1

    # SIGTERM reaches both processes: a clean exit, long before docker's SIGKILL.
    seconds, code = both.stop(timeout=30)
    assert code == 0, both.logs()
    assert seconds < 20


def test_server_stops_cleanly_on_sigterm(containers):
    server = containers.start("server")
    server.wait_ready(server.api)
    seconds, code = server.stop(timeout=30)
    assert code == 0, server.logs()
    assert seconds < 15, "SHUTDOWN_DELAY_SECONDS=1: the server drains, then exits on SIGTERM"
