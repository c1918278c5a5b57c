"""The worker's parts in this process: task metrics, the probe server, a whole run in memory."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from taskiq import TaskiqMessage, TaskiqResult, TaskiqState

from app import metrics
from app.broker import KiqBroker
from app.config import Settings
from app.errors import ConfigError
from app.main import create_app
from app.probes import ServerProbes
from app.worker import ProbeServer, TaskMetricsMiddleware, on_worker_shutdown, on_worker_startup
from scripts.localinfra import free_port
from tests.support.memory import MemoryTransport
from tests.support.stack import metric_value
from tests.support.worker import InProcessWorker

ADD = "app.tasks.example:add"


def worker_metric(name: str, **labels: str) -> float:
    try:
        return metric_value(metrics.worker_exposition()[0].decode(), name, **labels)
    except KeyError:
        return 0.0


async def get(port: int, path: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)


def test_metrics_middleware_counts_and_logs(caplog) -> None:
    middleware = TaskMetricsMiddleware()
    message = TaskiqMessage(task_id="m1", task_name="unit.task", labels={}, args=[], kwargs={})
    received = worker_metric("kiqstack_tasks_received_total", task_name="unit.task")
    failed = worker_metric("kiqstack_tasks_failed_total", task_name="unit.task")
    middleware.pre_execute(message)
    result: TaskiqResult[Any] = TaskiqResult(
        is_err=True, return_value=None, execution_time=0.0, error=ValueError("boom")
    )
    middleware.post_execute(message, result)
    assert worker_metric("kiqstack_tasks_received_total", task_name="unit.task") == received + 1
    assert worker_metric("kiqstack_tasks_failed_total", task_name="unit.task") == failed + 1
    assert result.execution_time > 0  # microseconds kept, not taskiq's 10 ms rounding
    assert "task finished id=m1 name=unit.task" in caplog.text
    assert "outcome=error error=ValueError: boom" in caplog.text


def test_metrics_middleware_counts_without_info_logs(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="kiqstack.worker")
    middleware = TaskMetricsMiddleware()
    message = TaskiqMessage(task_id="q1", task_name="unit.quiet", labels={}, args=[], kwargs={})
    succeeded = worker_metric("kiqstack_tasks_succeeded_total", task_name="unit.quiet")
    middleware.pre_execute(message)
    result: TaskiqResult[Any] = TaskiqResult(is_err=False, return_value=1, execution_time=0.0)
    middleware.post_execute(message, result)
    assert worker_metric("kiqstack_tasks_succeeded_total", task_name="unit.quiet") == succeeded + 1
    assert result.execution_time > 0
    assert "q1" not in caplog.text


async def test_a_task_runs_end_to_end_in_memory(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker
) -> None:
    task = broker.find_task(ADD)
    assert task is not None
    succeeded = worker_metric("kiqstack_tasks_succeeded_total", task_name=ADD)
    handle = await task.kiq(20, 22)
    result = await handle.wait_result(timeout=10)
    assert result.return_value == 42
    await worker.drain()
    assert worker_metric("kiqstack_tasks_succeeded_total", task_name=ADD) == succeeded + 1
    assert not transport.inflight.held


async def test_deliveries_left_when_the_worker_stops_are_given_back(
    broker: KiqBroker, transport: MemoryTransport
) -> None:
    body = json.dumps(
        {"task_id": "left", "task_name": ADD, "labels": {}, "args": [1, 1], "kwargs": {}}
    ).encode()
    listener = broker.listen()
    first = transport.deliver(body)
    second = transport.deliver(body.replace(b"left", b"left2"))
    assert (await asyncio.wait_for(anext(listener), 5)).data == first.data
    await listener.aclose()
    assert transport.client.answers(second)[0].startswith(b"-NAK")
    assert not broker.is_listening


@pytest.fixture
async def probes(broker: KiqBroker) -> Any:
    server = ProbeServer(broker, "127.0.0.1", free_port())
    await server.start()
    yield server
    await server.stop()


async def test_worker_probes(probes: ProbeServer, transport: MemoryTransport) -> None:
    port = probes.port
    assert (await get(port, "/livez")).text == "ok\n"
    ready = await get(port, "/readyz")
    assert ready.status_code == 503
    assert ready.text == "not consuming\n"  # nobody listens yet
    transport.connected = False
    assert (await get(port, "/readyz")).text == "nats disconnected\n"
    transport.connected = True
    transport.trouble = "stream or consumer missing"
    assert (await get(port, "/readyz")).text == "nats: stream or consumer missing\n"
    transport.trouble = None
    assert "kiqstack_tasks_in_flight" in (await get(port, "/metrics")).text
    assert (await get(port, "/nothing")).status_code == 404
    assert (await get(port, "/livez", "POST")).status_code == 405


async def test_worker_probes_ready_while_listening(
    probes: ProbeServer, worker: InProcessWorker
) -> None:
    await asyncio.sleep(0)  # the worker starts listening
    ready = await get(probes.port, "/readyz")
    assert (ready.status_code, ready.text) == (200, "ok\n")


async def test_worker_probes_report_redis(probes: ProbeServer, broker: KiqBroker) -> None:
    async def down() -> bool:
        raise ConnectionError

    broker.results.ping = down  # type: ignore[method-assign]
    assert (await get(probes.port, "/readyz")).text == "redis unreachable: ConnectionError\n"


async def test_a_second_worker_process_waits_for_the_port(broker: KiqBroker) -> None:
    port = free_port()
    first = ProbeServer(broker, "127.0.0.1", port)
    second = ProbeServer(broker, "127.0.0.1", port)
    await first.start()
    await second.start()  # does not fail: it keeps trying in the background
    assert second.server is None
    await first.stop()
    await second.stop()


async def test_server_probes(settings: Settings, broker: KiqBroker) -> None:
    app = create_app(settings, broker=broker)
    server = ServerProbes(app.state.kiq, "127.0.0.1", free_port())
    await server.start()
    try:
        ready = await get(server.port, "/readyz")
        assert ready.status_code == 503  # the API's broker was not started
        assert ready.json()["checks"]["nats"] == "disconnected"
        assert "kiqstack_http_requests" in (await get(server.port, "/metrics")).text
        assert (await get(server.port, "/livez")).status_code == 200
        taken = ServerProbes(app.state.kiq, "127.0.0.1", server.port)
        with pytest.raises(ConfigError, match="already in use"):
            await taken.start()
    finally:
        await server.stop()


async def test_worker_startup_and_shutdown_handlers(settings: Settings, broker: KiqBroker) -> None:
    state = TaskiqState()
    state.kiqstack_broker = broker.configure(
        settings.model_copy(update={"metrics_port": free_port()})
    )
    await on_worker_startup(state)
    try:
        port = state.kiqstack_probes.port
        assert (await get(port, "/livez")).status_code == 200
    finally:
        await on_worker_shutdown(state)
    assert state.kiqstack_poller.cancelled() or state.kiqstack_poller.done()
