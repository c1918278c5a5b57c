"""The result backend (app.results) over fakeredis: batched writes, waiting, dispatch records."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import pytest
from taskiq import TaskiqResult
from taskiq.depends.progress_tracker import TaskProgress, TaskState
from taskiq_redis.exceptions import ResultIsMissingError

from app.config import Settings
from app.results import KiqResultBackend, result_save_failed
from tests.support.memory import memory_backend


def ok(value: object) -> TaskiqResult[object]:
    return TaskiqResult(is_err=False, return_value=value, execution_time=0.0)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def backend(settings: Settings, server: fakeredis.FakeServer) -> KiqResultBackend[Any]:
    return memory_backend(settings, server)


@pytest.fixture
def reader(settings: Settings, server: fakeredis.FakeServer) -> KiqResultBackend[Any]:
    """Another process's backend on the same Redis."""
    return memory_backend(settings, server)


async def test_results_are_json_with_a_ttl(backend: KiqResultBackend[Any], settings) -> None:
    await backend.set_result("t1", ok({"a": 1}))
    raw = await backend.redis.get(f"{settings.result_key_prefix}:t1")
    assert json.loads(raw)["return_value"] == {"a": 1}
    ttl = await backend.redis.ttl(f"{settings.result_key_prefix}:t1")
    assert 0 < ttl <= settings.result_ttl_seconds
    assert (await backend.get_result("t1")).return_value == {"a": 1}
    assert (await backend.read_result("t1"))["return_value"] == {"a": 1}


async def test_results_finishing_together_share_a_round_trip(
    backend: KiqResultBackend[Any],
) -> None:
    executed: list[int] = []
    send = backend.writer._send

    async def counting(commands: list[Any]) -> list[Any]:
        executed.append(len(commands))
        return await send(commands)

    backend.writer._send = counting  # type: ignore[method-assign]
    await asyncio.gather(*(backend.set_result(f"b{i}", ok(i)) for i in range(20)))
    assert sum(executed) == 20 + len(executed)  # every SET, plus one PUBLISH per batch
    assert len(executed) < 20
    for i in range(20):
        assert (await backend.get_result(f"b{i}")).return_value == i


async def test_a_waiter_is_woken_with_the_result_inline(
    backend: KiqResultBackend[Any], reader: KiqResultBackend[Any]
) -> None:
    waiting = asyncio.create_task(reader.wait_for_result("t-wake", 10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await backend.set_result("t-wake", ok(41))
    assert await waiting is True
    assert reader.waiter.pop_inline("t-wake") is not None  # came with the notification
    await reader.shutdown()


async def test_big_results_are_announced_without_their_value(
    backend: KiqResultBackend[Any], reader: KiqResultBackend[Any]
) -> None:
    big = "x" * (KiqResultBackend.inline_limit * 2)
    waiting = asyncio.create_task(reader.wait_for_result("t-big", 10))
    await asyncio.sleep(0.1)
    await backend.set_result("t-big", ok(big))
    assert await waiting is True
    assert reader.waiter.pop_inline("t-big") is None
    assert (await reader.get_result("t-big")).return_value == big
    await reader.shutdown()


async def test_a_result_saved_before_the_wait_is_found(
    backend: KiqResultBackend[Any], reader: KiqResultBackend[Any]
) -> None:
    await backend.set_result("t-early", ok("early"))
    assert await reader.is_result_ready("t-early") is True
    assert await reader.wait_for_result("t-early", 0) is True


async def test_waiting_for_nothing_ends_with_false(reader: KiqResultBackend[Any]) -> None:
    assert await reader.wait_for_result("never", 0.3) is False
    with pytest.raises(ResultIsMissingError):
        await reader.get_result("never")
    assert await reader.read_result("never") is None


async def test_a_failed_save_flags_the_delivery(backend: KiqResultBackend[Any]) -> None:
    async def broken(*_: Any, **__: Any) -> None:
        raise ConnectionError("redis gone")

    backend.writer.write = broken  # type: ignore[method-assign]

    async def save() -> bool:
        with pytest.raises(ConnectionError):
            await backend.set_result("t-lost", ok(1))
        return result_save_failed()

    assert await asyncio.create_task(save()) is True
    assert result_save_failed() is False  # only the task that failed


async def test_a_connection_error_reaches_every_writer(backend: KiqResultBackend[Any]) -> None:
    def down(*_: Any, **__: Any) -> Any:
        raise ConnectionError("down")

    backend.writer.redis.connection_pool.make_connection = down  # type: ignore[method-assign]

    results = await asyncio.gather(
        *(backend.set_result(f"f{i}", ok(i)) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_an_error_answer_reaches_only_its_writer(backend: KiqResultBackend[Any]) -> None:
    # A command Redis refuses, in a batch next to good SETs: only its own reply is the error.
    good = backend.writer.write("w-ok", b"1")
    replies = await backend.writer._send([(b"SET", "w-a", b"1"), (b"NOSUCHCOMMAND",)])
    await good
    assert replies[0] == b"OK"
    assert "unknown command" in str(replies[1]).lower()
    assert await backend.redis.get("w-ok") == b"1"
    assert await backend.redis.get("w-a") == b"1"


async def test_a_broken_connection_is_replaced(backend: KiqResultBackend[Any]) -> None:
    await backend.set_result("r1", ok(1))
    connection = backend.writer._connection
    assert connection is not None
    await connection.disconnect()  # as after a Redis restart
    await backend.set_result("r2", ok(2))
    assert (await backend.get_result("r2")).return_value == 2
    await backend.shutdown()
    assert backend.writer._connection is None


async def test_dispatch_records(backend: KiqResultBackend[Any], settings) -> None:
    assert await backend.read_status("d1") == (None, None)
    await backend.record_dispatch("d1", "some.task", "cpu")
    assert await backend.read_status("d1") == (None, {"task_name": "some.task", "queue": "cpu"})
    ttl = await backend.redis.ttl(backend.meta_key("d1"))
    assert 0 < ttl <= settings.result_ttl_seconds
    await backend.set_result("d1", ok(3))
    result, record = await backend.read_status("d1")
    assert result is not None
    assert result["return_value"] == 3
    assert record == {"task_name": "some.task", "queue": "cpu"}
    await backend.forget_dispatch("d1")
    assert (await backend.read_status("d1"))[1] is None


async def test_progress_is_kept_next_to_the_result(backend: KiqResultBackend[Any]) -> None:
    await backend.set_progress("p1", TaskProgress(state=TaskState.STARTED, meta={"done": 3}))
    progress = await backend.get_progress("p1")
    assert progress is not None
    assert progress.meta == {"done": 3}
    assert await backend.ping() is True


def test_the_backend_is_usable_from_another_event_loop(backend: KiqResultBackend[Any]) -> None:
    asyncio.run(backend.set_result("loop1", ok(1)))
    assert asyncio.run(backend.read_result("loop1"))["return_value"] == 1
    asyncio.run(backend.set_result("loop2", ok(2)))


def _count_exists(backend: KiqResultBackend[Any]) -> list[str]:
    calls: list[str] = []
    exists = backend.redis.exists

    async def counting(*keys: str) -> int:
        calls.extend(keys)
        return await exists(*keys)

    backend.redis.exists = counting  # type: ignore[method-assign]
    return calls


async def _subscribe(reader: KiqResultBackend[Any]) -> None:
    # A first wait starts the subscription, as in a client that awaits results.
    assert await reader.wait_for_result("warm-up", 0.05) is False


async def test_an_expected_result_needs_no_exists(
    backend: KiqResultBackend[Any], reader: KiqResultBackend[Any]
) -> None:
    await _subscribe(reader)
    calls = _count_exists(reader)
    reader.expect("x-late")  # dispatched, then waited for before the result comes
    reader.expect("x-early")  # dispatched, and its result announced before anyone waits
    await backend.set_result("x-early", ok("early"))
    waiting = asyncio.create_task(reader.wait_for_result("x-late", 10))
    await asyncio.sleep(0.05)
    await backend.set_result("x-late", ok("late"))
    assert await waiting is True
    assert await reader.is_result_ready("x-early") is True
    assert calls == []  # neither wait asked Redis whether the key exists
    assert (await reader.get_result("x-late")).return_value == "late"
    assert (await reader.get_result("x-early")).return_value == "early"


async def test_an_expectation_from_an_earlier_subscription_checks_the_key(
    backend: KiqResultBackend[Any], reader: KiqResultBackend[Any]
) -> None:
    await _subscribe(reader)
    reader.expect("x-stale")
    reader.waiter._epoch += 1  # the subscription broke and came back: announcements were missed
    value = json.dumps(ok(1).model_dump(mode="json")).encode()
    await backend.redis.set(backend.result_key("x-stale"), value)  # saved, never announced
    waiting: list[bool] = []  # at each EXISTS: was the wait for the announcement still ahead?
    exists = reader.redis.exists

    async def checking(*keys: str) -> int:
        futures = reader.waiter._waiters.get("x-stale", [])
        waiting.append(bool(futures) and not any(f.done() for f in futures))
        return await exists(*keys)

    reader.redis.exists = checking  # type: ignore[method-assign]
    assert await reader.wait_for_result("x-stale", 10) is True
    assert waiting == [True]  # checked before waiting, not only after the wait ran out


async def test_nothing_is_expected_before_a_subscription(reader: KiqResultBackend[Any]) -> None:
    reader.expect("x-none")  # a client that never waited: no subscription, nothing kept
    assert not reader.waiter._expected
