"""Pushed results (app.results): batched saves, the notification channel and its fallbacks.

Real Redis (and a real worker process where a task runs); no mocks and no timing assertions: every
wait has a generous bound and the tests only check what is returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from taskiq import TaskiqResult

from app.config import Settings
from app.results import KiqResultBackend, result_save_failed
from scripts.localinfra import redis_server
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

BOUND = 30.0  # seconds; a correct implementation answers long before


def _ok(value: object) -> TaskiqResult[object]:
    return TaskiqResult(is_err=False, return_value=value, execution_time=0.0)


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[KiqResultBackend[object]]:
    backend: KiqResultBackend[object] = KiqResultBackend(settings)
    yield backend
    await backend.shutdown()


@pytest.fixture
async def reader(settings: Settings) -> AsyncIterator[KiqResultBackend[object]]:
    backend: KiqResultBackend[object] = KiqResultBackend(settings)
    yield backend
    await backend.shutdown()


async def test_waiter_is_woken_by_the_save(writer, reader) -> None:
    waiting = asyncio.create_task(reader.wait_for_result("t-wake", BOUND))
    await asyncio.sleep(0.2)  # let the reader subscribe and check the key first
    assert not waiting.done()
    await writer.set_result("t-wake", _ok(41))
    assert await waiting is True
    assert (await reader.get_result("t-wake")).return_value == 41


async def test_result_saved_before_the_wait_is_found(writer, reader) -> None:
    await writer.set_result("t-early", _ok("early"))
    assert await reader.is_result_ready("t-early") is True
    assert (await reader.get_result("t-early")).return_value == "early"


async def test_a_save_survives_its_connection_being_killed(writer, reader) -> None:
    await writer.set_result("t-before", _ok(1))
    # Redis closes every other client's connection, the writer's own included.
    killed = await reader.redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed >= 1
    await writer.set_result("t-after", _ok(2))  # sent again on a fresh connection
    assert (await reader.get_result("t-after")).return_value == 2


async def test_every_save_is_announced_on_the_channel(writer, settings: Settings) -> None:
    async with Redis.from_url(settings.redis_url) as redis:
        pubsub = redis.pubsub()
        await pubsub.subscribe(writer.channel)
        await pubsub.get_message(timeout=5)  # subscribe confirmation
        await asyncio.gather(*(writer.set_result(f"t-ann-{i}", _ok(i)) for i in range(20)))
        seen: set[str] = set()
        while len(seen) < 20:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=BOUND)
            assert message is not None, f"announced only {sorted(seen)}"
            for line in message["data"].split(b"\n"):
                seen.add(line.partition(b" ")[0].decode())
        await pubsub.aclose()
    assert seen == {f"t-ann-{i}" for i in range(20)}


async def test_batched_saves_each_land(writer, reader) -> None:
    ids = [f"t-batch-{i}" for i in range(50)]
    await asyncio.gather(*(writer.set_result(task_id, _ok(i)) for i, task_id in enumerate(ids)))
    for i, task_id in enumerate(ids):
        assert (await reader.get_result(task_id)).return_value == i


async def test_large_result_is_read_from_the_key(writer, reader) -> None:
    big = "x" * (KiqResultBackend.inline_limit * 2)
    waiting = asyncio.create_task(reader.wait_for_result("t-big", BOUND))
    await asyncio.sleep(0.2)
    await writer.set_result("t-big", _ok(big))
    assert await waiting is True
    assert (await reader.get_result("t-big")).return_value == big


async def test_unannounced_result_is_still_found(reader, settings: Settings) -> None:
    """A save whose notification is lost (written without PUBLISH) is found by the key check."""
    waiting = asyncio.create_task(reader.wait_for_result("t-silent", BOUND))
    await asyncio.sleep(0.2)
    raw = _ok("quiet").model_dump_json().encode()
    async with Redis.from_url(settings.redis_url) as redis:
        await redis.set(reader.result_key("t-silent"), raw, ex=60)
    assert await waiting is True
    assert (await reader.get_result("t-silent")).return_value == "quiet"


async def test_several_waiters_for_one_task(writer, reader) -> None:
    waiting = [asyncio.create_task(reader.wait_for_result("t-many", BOUND)) for _ in range(3)]
    await asyncio.sleep(0.2)
    await writer.set_result("t-many", _ok(3))
    assert await asyncio.gather(*waiting) == [True, True, True]


async def test_wait_times_out_without_a_result(reader) -> None:
    assert await reader.wait_for_result("t-never", 0.3) is False
    assert await reader.is_result_ready("t-never") is False


async def test_wait_result_of_a_real_task(stack: Stack, settings: Settings) -> None:
    """taskiq's own ``wait_result`` (default polling interval) through a real worker process."""
    from app.tasks import example
    from app.tasks.broker import broker

    stack.role("worker")
    broker.configure(settings)
    await broker.startup()
    try:
        handle = await example.add.kiq(2, 3)
        result = await handle.wait_result(timeout=BOUND)
        assert result.return_value == 5
        handles = [await example.add.kiq(i, i) for i in range(20)]
        results = await asyncio.gather(*(h.wait_result(timeout=BOUND) for h in handles))
        assert [r.return_value for r in results] == [2 * i for i in range(20)]
    finally:
        await broker.shutdown()


async def test_waiter_survives_a_redis_restart(tmp_path: Path, settings: Settings) -> None:
    server = redis_server(tmp_path).start()
    try:
        url = f"redis://{server.host}:{server.port}/0"
        own = settings.model_copy(update={"redis_url": url})
        reader: KiqResultBackend[object] = KiqResultBackend(own)
        writer: KiqResultBackend[object] = KiqResultBackend(own)
        try:
            assert await reader.wait_for_result("t-restart-warm", 0.1) is False
            waiting = asyncio.create_task(reader.wait_for_result("t-restart", BOUND))
            await asyncio.sleep(0.2)
            server.stop()
            server.start()
            await writer.set_result("t-restart", _ok("back"))
            assert await waiting is True
            assert (await reader.get_result("t-restart")).return_value == "back"
        finally:
            await reader.shutdown()
            await writer.shutdown()
    finally:
        server.stop()


async def test_failed_save_flags_the_delivery(tmp_path: Path, settings: Settings) -> None:
    server = redis_server(tmp_path).start()
    url = f"redis://{server.host}:{server.port}/0"
    backend: KiqResultBackend[object] = KiqResultBackend(
        settings.model_copy(update={"redis_url": url})
    )
    server.stop()

    async def save() -> bool:
        with pytest.raises(Exception):  # noqa: B017, PT011 - any Redis connection error
            await backend.set_result("t-down", _ok(1))
        return result_save_failed()

    try:
        assert await asyncio.create_task(save()) is True
        assert result_save_failed() is False  # only the saving task's delivery is flagged
    finally:
        await backend.shutdown()
