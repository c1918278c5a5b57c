"""Retries, delayed tasks, cancellation and progress against real NATS and Redis processes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import redis as redis_sync
from nats.aio.client import Client

from app.config import Settings
from app.tasks.broker import broker as shared_broker
from app.tasks.broker import build_broker
from scripts.localinfra import Server
from tests.support import lifecycle_tasks
from tests.support.stack import Stack, poll, result_of

MODULES = "app.tasks.example,tests.support.lifecycle_tasks"


def client_broker(settings: Settings) -> Any:
    """A broker of this test process knowing the lifecycle tasks (with their labels)."""
    broker = build_broker(settings)
    for name, task in shared_broker.get_all_tasks().items():
        if name.startswith("tests.") and broker.find_task(name) is None:
            broker.register_task(task.original_func, task_name=name, **task.labels)
    assert lifecycle_tasks.flaky.task_name == "tests.flaky"
    return broker


def status(base: str, task_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{base}/tasks/{task_id}", timeout=5).json()
    return answer


async def dead_letters(env: dict[str, Any]) -> int:
    nc = Client()
    await nc.connect(env["NATS_URL"])
    try:
        info = await nc.jetstream().stream_info(env["NATS_DEAD_LETTER_STREAM"])
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_a_task_that_fails_twice_returns_its_success(
    stack: Stack, env: dict[str, Any], redis_url: str, settings: Settings
) -> None:
    stack.role("worker", TASK_MODULES=MODULES)
    broker = client_broker(settings)
    await broker.startup()
    try:
        key = f"runs:{uuid.uuid4().hex}"
        task = await broker.find_task("tests.flaky").kiq(key, 2)
        result = await task.wait_result(timeout=60)
        assert not result.is_err, result.error
        assert result.return_value == "ok on run 3"
    finally:
        await broker.shutdown()
    assert redis_sync.Redis.from_url(redis_url).get(key) == b"3"
    assert await dead_letters(env) == 0


async def test_retrying_status_then_the_last_error_and_no_dead_letter(
    stack: Stack, env: dict[str, Any], redis_url: str
) -> None:
    server = stack.role("server", TASK_MODULES=MODULES)
    stack.role("worker", TASK_MODULES=MODULES)
    base = f"http://127.0.0.1:{server.port}"
    key = f"runs:{uuid.uuid4().hex}"
    answer = httpx.post(f"{base}/tasks/tests.always_fails", json={"args": [key]}, timeout=30)
    task_id = answer.json()["task_id"]
    retrying = poll(
        lambda: s if (s := status(base, task_id))["status"] == "retrying" else None,
        60,
        lambda: f"never retrying: {status(base, task_id)}",
    )
    assert retrying["attempt"] == 2
    assert retrying["max_retries"] == 1
    assert retrying["last_error"] == {"type": "ValueError", "message": "failure 1"}
    assert retrying["eta"]
    final = result_of(base, task_id, timeout=60)
    assert final["status"] == "error", final
    assert final["error"]["message"] == "failure 2"
    assert redis_sync.Redis.from_url(redis_url).get(key) == b"2"
    assert await dead_letters(env) == 0


def test_a_delayed_task_survives_a_restart_of_nats_and_of_kiqstack(
    stack: Stack, own_nats: Server, redis_url: str
) -> None:
    scheduler = stack.role("scheduler", TASK_MODULES=MODULES)
    server = stack.role("server", TASK_MODULES=MODULES)
    base = f"http://127.0.0.1:{server.port}"
    key = f"runs:{uuid.uuid4().hex}"
    answer = httpx.post(
        f"{base}/tasks/tests.marker", json={"args": [key], "delay_seconds": 8}, timeout=30
    )
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["task_id"]
    scheduled = status(base, task_id)
    assert scheduled["status"] == "scheduled", scheduled
    assert scheduled["eta"], scheduled
    server.stop()
    scheduler.stop()
    own_nats.stop()
    own_nats.start()  # same store directory: the definition is still there
    stack.role("scheduler", TASK_MODULES=MODULES)
    server = stack.role("server", TASK_MODULES=MODULES)
    stack.role("worker", TASK_MODULES=MODULES)
    base = f"http://127.0.0.1:{server.port}"
    final = result_of(base, task_id, timeout=90)
    assert final["status"] == "success", final
    assert final["result"] == "ran", final
    assert redis_sync.Redis.from_url(redis_url).get(key) == b"1"


def test_bad_delays_are_refused(stack: Stack) -> None:
    server = stack.role("server", TASK_MODULES=MODULES)
    base = f"http://127.0.0.1:{server.port}"
    for extra, reason in (
        ({"delay_seconds": -1}, "0 or more"),
        ({"delay_seconds": 10**9}, "MAX_SCHEDULE_DELAY_SECONDS"),
        ({"eta": "2030-01-01T09:00:00"}, "time zone"),
        ({"eta": "tomorrow"}, "ISO 8601"),
        ({"eta": "2001-01-01T00:00:00Z"}, "in the past"),
        ({"eta": "2030-01-01T09:00:00Z", "delay_seconds": 5}, "not both"),
    ):
        answer = httpx.post(f"{base}/tasks/tests.marker", json={"args": ["k"], **extra})
        assert answer.status_code == 422, (extra, answer.text)
        assert reason in answer.json()["detail"], (extra, answer.text)


def test_cancelled_tasks_never_run(stack: Stack, redis_url: str) -> None:
    server = stack.role("server", TASK_MODULES=MODULES)
    base = f"http://127.0.0.1:{server.port}"
    key = f"runs:{uuid.uuid4().hex}"
    queued = httpx.post(f"{base}/tasks/tests.marker", json={"args": [key]}).json()["task_id"]
    delayed = httpx.post(
        f"{base}/tasks/tests.marker", json={"args": [key], "delay_seconds": 2}
    ).json()["task_id"]
    answer = httpx.delete(f"{base}/tasks/{queued}")
    assert answer.status_code == 202
    assert answer.json()["status"] == "cancelling"
    answer = httpx.delete(f"{base}/tasks/{delayed}")
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    assert status(base, delayed)["status"] == "cancelled"
    # After both: a task due after the delayed one, to know that the worker got that far.
    later_key = f"{key}:later"
    later = httpx.post(
        f"{base}/tasks/tests.marker", json={"args": [later_key], "delay_seconds": 4}
    ).json()["task_id"]
    stack.role("worker", TASK_MODULES=MODULES)
    assert result_of(base, queued, timeout=60)["status"] == "cancelled"
    assert result_of(base, later, timeout=60)["status"] == "success"
    assert redis_sync.Redis.from_url(redis_url).get(key) is None  # neither ever ran
    assert httpx.delete(f"{base}/tasks/{later}").status_code == 409
    assert httpx.delete(f"{base}/tasks/no-such-task").status_code == 404
    assert httpx.delete(f"{base}/tasks/{queued}").status_code == 200  # cancelled already


def test_progress_is_visible_and_a_running_task_sees_its_cancel(stack: Stack) -> None:
    server = stack.role("server", TASK_MODULES=MODULES)
    stack.role("worker", TASK_MODULES=MODULES)
    base = f"http://127.0.0.1:{server.port}"
    task_id = httpx.post(f"{base}/tasks/tests.until_cancelled").json()["task_id"]
    running = poll(
        lambda: s if (s := status(base, task_id))["status"] == "running" else None,
        60,
        lambda: f"never running: {status(base, task_id)}",
    )
    assert running["progress"]["value"] == 0.5
    assert running["progress"]["message"] == "half way"
    answer = httpx.delete(f"{base}/tasks/{task_id}")
    assert answer.status_code == 202
    assert status(base, task_id)["cancel_requested"] is True
    final = result_of(base, task_id, timeout=60)
    assert final["status"] == "cancelled", final
    assert final["progress"]["value"] == 0.5


async def test_wait_for_progress_from_python(stack: Stack, settings: Settings) -> None:
    from app.lifecycle.cancel import cancel_task
    from app.lifecycle.progress import wait_for_progress

    stack.role("worker", TASK_MODULES=MODULES)
    broker = client_broker(settings)
    await broker.startup()
    try:
        task = await broker.find_task("tests.until_cancelled").kiq()
        progress = await wait_for_progress(broker, task.task_id, 0.5, timeout=60)
        assert progress is not None
        assert progress["value"] == 0.5
        await cancel_task(broker, task.task_id)
        result = await task.wait_result(timeout=60)
        assert result.is_err
        assert "cancelled" in str(result.error)
    finally:
        await broker.shutdown()


async def test_a_generated_message_dead_letters_and_replays_without_schedule_headers(
    stack: Stack, env: dict[str, Any], settings: Settings
) -> None:
    """A delayed task no worker knows: its copy carries Nats-Scheduler, which NATS would refuse."""
    from taskiq.kicker import AsyncKicker

    from app.deadletter import open_dead_letters

    stack.role("worker", TASK_MODULES=MODULES, MAX_DELIVER=1)
    broker = build_broker(settings)
    await broker.startup()
    try:
        kicker: AsyncKicker[Any, Any] = AsyncKicker("tests.nowhere", broker, {"delay": 1})
        await kicker.kiq()
    finally:
        await broker.shutdown()

    async def letters() -> list[Any]:
        async with open_dead_letters(settings) as stream:
            return [letter async for letter in stream.letters(10)]

    deadline = 60
    found: list[Any] = []
    for _ in range(deadline * 5):
        found = await letters()
        if found:
            break
        await asyncio.sleep(0.2)
    assert len(found) == 1, stack.dump_logs()
    nc = Client()
    await nc.connect(env["NATS_URL"])
    try:
        stored = await nc.jetstream().get_msg(env["NATS_DEAD_LETTER_STREAM"], 1)
    finally:
        await nc.close()
    assert not [k for k in (stored.headers or {}) if k.startswith("Nats-")], stored.headers
    async with open_dead_letters(settings) as stream:
        results = [result async for result in stream.replay([1])]
    assert [r.outcome.value for r in results] == ["replayed"], results
