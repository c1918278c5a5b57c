"""Worker queues against a real nats-server and Redis, with kiqstack as real processes.

Routing (a ``cpu`` task never runs on a worker that serves only ``default``), a full ``cpu`` queue
that does not hold up ``default`` tasks, the upgrade of a stream and consumer made by a release
without queues, and the queue in ``dlq``, metrics, logs and the status API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from app.config import Settings
from app.wire import MSG_ID_HEADER, TASK_NAME_HEADER
from tests.integration.test_deadletter import _nats, dlq
from tests.support.queue_tasks import GATE_KEY_SUFFIX
from tests.support.stack import Role, Stack, dispatch, metric_value, poll, result_of

pytestmark = [pytest.mark.integration, pytest.mark.process]

MODULES = "app.tasks.example,tests.support.queue_tasks"
ADD = "app.tasks.example:add"
CPU_ECHO = "tests.cpu_echo"
GATED = "tests.cpu_gated"


def consumer_state(settings: Settings, queue: str) -> tuple[int, int]:
    """(num_pending, num_ack_pending) of a queue's durable consumer, read from NATS."""
    name = settings.nats_consumer if queue == "default" else f"{settings.nats_consumer}_{queue}"
    [info] = asyncio.run(_nats(settings, lambda js: js.consumer_info(settings.nats_stream, name)))
    return int(info.num_pending or 0), int(info.num_ack_pending or 0)


def status(server: Role, task_id: str) -> dict[str, Any]:
    """``GET /tasks/{task_id}``."""
    body: dict[str, Any] = httpx.get(f"{server.probe_url}/tasks/{task_id}", timeout=5).json()
    return body


def queued(server: Role, task: str, *args: Any) -> str:
    """Dispatch a task through the API; return its id."""
    response = dispatch(server.probe_url, task, *args)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def test_a_cpu_task_waits_for_a_cpu_worker(stack: Stack, settings: Settings) -> None:
    server = stack.role("server", TASK_MODULES=MODULES)
    default_worker = stack.role("worker", TASK_MODULES=MODULES, WORKER_QUEUES="default")
    cpu_task = queued(server, CPU_ECHO, 7)
    queued_status = status(server, cpu_task)
    assert {k: queued_status[k] for k in ("task_id", "task_name", "queue", "status", "result")} == {
        "task_id": cpu_task,
        "task_name": CPU_ECHO,
        "queue": "cpu",
        "status": "queued",
        "result": None,
    }
    # A default task dispatched after it runs: the default worker pulls, and never sees the cpu one.
    assert result_of(server.probe_url, queued(server, ADD, 1, 2))["result"] == 3
    assert status(server, cpu_task)["status"] == "queued"
    assert consumer_state(settings, "cpu") == (1, 0)  # waiting in its own consumer
    assert consumer_state(settings, "default") == (0, 0)
    assert cpu_task not in default_worker.logs()

    cpu_worker = stack.role("worker", TASK_MODULES=MODULES, WORKER_QUEUES="cpu")
    done = result_of(server.probe_url, cpu_task)
    assert (done["status"], done["result"], done["queue"]) == ("success", 7, "cpu")
    assert f"task finished id={cpu_task} name={CPU_ECHO} queue=cpu" in cpu_worker.logs()
    assert cpu_task not in default_worker.logs()

    cpu_page = cpu_worker.metrics()
    assert metric_value(cpu_page, "kiqstack_tasks_succeeded_total", task_name=CPU_ECHO) == 1
    assert metric_value(cpu_page, "kiqstack_tasks_received_total", queue="cpu") == 1
    assert metric_value(cpu_page, "kiqstack_task_duration_seconds_count", queue="cpu") == 1
    with pytest.raises(KeyError):
        metric_value(default_worker.metrics(), "kiqstack_tasks_received_total", queue="cpu")
    assert metric_value(default_worker.metrics(), "kiqstack_tasks_succeeded_total", queue="default")
    server_page = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    assert metric_value(server_page, "kiqstack_tasks_dispatched_total", queue="cpu") == 1
    assert metric_value(server_page, "kiqstack_tasks_dispatched_total", queue="default") == 1

    # Queue depth: one series per served queue (polled every few seconds).
    poll(
        lambda: "kiqstack_queue_pending{" in cpu_worker.metrics() or None,
        30,
        lambda: "no kiqstack_queue_pending series on the cpu worker",
    )
    page = cpu_worker.metrics()
    assert metric_value(page, "kiqstack_queue_pending", queue="cpu") == 0
    with pytest.raises(KeyError):
        metric_value(page, "kiqstack_queue_pending", queue="default")


def test_a_full_cpu_queue_does_not_delay_default_tasks(stack: Stack, settings: Settings) -> None:
    server = stack.role("server", TASK_MODULES=MODULES)
    stack.role("worker", TASK_MODULES=MODULES, WORKER_QUEUES="default,cpu", WORKER_CONCURRENCY="2")
    blocked = [queued(server, GATED) for _ in range(6)]
    # Both cpu slots taken, four cpu tasks waiting.
    poll(
        lambda: consumer_state(settings, "cpu") == (4, 2) or None,
        30,
        lambda: f"cpu consumer at {consumer_state(settings, 'cpu')}",
    )
    quick = [queued(server, ADD, i, 1) for i in range(4)]  # more than WORKER_CONCURRENCY
    for i, task_id in enumerate(quick):
        assert result_of(server.probe_url, task_id)["result"] == i + 1
    # ... while the cpu backlog is still there, every cpu task still queued.
    assert consumer_state(settings, "cpu") == (4, 2)
    assert all(status(server, task_id)["status"] == "queued" for task_id in blocked)

    asyncio.run(_open_gate(settings))
    for task_id in blocked:
        assert result_of(server.probe_url, task_id)["result"] == "through"
    assert consumer_state(settings, "cpu") == (0, 0)


async def _open_gate(settings: Settings) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.set(f"{settings.result_key_prefix}:{GATE_KEY_SUFFIX}", "1", ex=600)
    finally:
        await redis.aclose()


def _old_topology(settings: Settings) -> tuple[StreamConfig, ConsumerConfig]:
    """The stream and consumer as a release without queues created them."""
    stream = StreamConfig(
        name=settings.nats_stream,
        subjects=[settings.nats_subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=1,
        duplicate_window=120.0,
    )
    consumer = ConsumerConfig(
        durable_name=settings.nats_consumer,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_seconds,
        max_deliver=settings.max_deliver + 1,
        max_ack_pending=-1,
        max_waiting=512,
    )
    return stream, consumer


def test_tasks_queued_before_the_upgrade_all_run(stack: Stack, settings: Settings) -> None:
    stream, consumer = _old_topology(settings)
    ids = [f"old-{i}-{uuid.uuid4().hex[:8]}" for i in range(20)]

    def publish(task_id: str, i: int) -> Any:
        body = {"task_id": task_id, "task_name": ADD, "labels": {}, "args": [i, 100], "kwargs": {}}
        headers = {TASK_NAME_HEADER: ADD, MSG_ID_HEADER: task_id}
        return lambda js: js.publish(
            settings.nats_subject, json.dumps(body).encode(), headers=headers
        )

    asyncio.run(
        _nats(
            settings,
            lambda js: js.add_stream(config=stream),
            lambda js: js.add_consumer(settings.nats_stream, config=consumer),
            *(publish(task_id, i) for i, task_id in enumerate(ids)),
        )
    )
    assert consumer_state(settings, "default") == (20, 0)

    server = stack.role("server", TASK_MODULES=MODULES)
    stack.role("worker", TASK_MODULES=MODULES, WORKER_QUEUES="default,cpu")
    for i, task_id in enumerate(ids):
        # No dispatch record (the old API's would be in Redis): 404 until the result is stored.
        found = poll(
            lambda t=task_id: (
                (
                    (r := httpx.get(f"{server.probe_url}/tasks/{t}", timeout=5))
                    and r.status_code == 200
                    and r.json()
                )
                or None
            ),
            60,
            lambda t=task_id: f"task {t} never ran",
        )
        assert (found["status"], found["result"], found["queue"]) == ("success", i + 100, "default")

    [info, default, cpu] = asyncio.run(
        _nats(
            settings,
            lambda js: js.stream_info(settings.nats_stream),
            lambda js: js.consumer_info(settings.nats_stream, settings.nats_consumer),
            lambda js: js.consumer_info(settings.nats_stream, f"{settings.nats_consumer}_cpu"),
        )
    )
    assert info.config.subjects == [
        settings.nats_subject,
        f"{settings.nats_subject}.*",
        f"{settings.nats_schedule_subject}.>",
    ]
    assert info.config.allow_msg_schedules is True
    assert info.state.messages == 0
    assert default.config.filter_subject == settings.nats_subject
    assert default.delivered.stream_seq == 20
    assert cpu.config.filter_subject == f"{settings.nats_subject}.cpu"
    # And the upgraded stream routes the new queue.
    assert result_of(server.probe_url, queued(server, CPU_ECHO, 5))["result"] == 5


def test_dead_letters_show_their_queue_and_go_back_to_it(
    stack: Stack, settings: Settings, env: dict[str, Any]
) -> None:
    stack.base_env["MAX_DELIVER"] = "1"
    server = stack.role("server", TASK_MODULES=MODULES)
    # Serves cpu but does not know the cpu tasks: they are dead-lettered (unknown-task).
    unaware = stack.role("worker", TASK_MODULES="app.tasks.example", WORKER_QUEUES="cpu")
    task_id = queued(server, CPU_ECHO, 9)
    poll(
        lambda: "dead-lettered message" in unaware.logs() or None,
        30,
        lambda: f"not dead-lettered:\n{unaware.logs()}",
    )
    unaware.stop()
    listed = dlq(env, "list")
    assert listed.returncode == 0, listed.stderr
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (letter["task_id"], letter["task_name"], letter["queue"], letter["reason"]) == (
        task_id,
        CPU_ECHO,
        "cpu",
        "unknown-task",
    )

    replay = dlq(env, "replay", "--all")
    assert replay.returncode == 0, replay.stderr
    assert "-> queue cpu, stream" in replay.stdout
    assert consumer_state(settings, "cpu") == (1, 0)  # back on the cpu subject
    assert consumer_state(settings, "default") == (0, 0)
    stack.role("worker", TASK_MODULES=MODULES, WORKER_QUEUES="cpu")
    done = result_of(server.probe_url, task_id)
    assert (done["status"], done["result"], done["queue"]) == ("success", 9, "cpu")
