"""Idempotent dispatch (app.idempotency) over a broker in memory and fakeredis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from app.broker import KiqBroker
from app.errors import (
    DispatchError,
    IdempotencyKeyReusedError,
    IdempotencyUnconfirmedError,
    InvalidRequestError,
)
from app.idempotency import (
    IdempotencyStore,
    Record,
    check_key,
    dispatch_once,
    fingerprint,
    kiq_once,
)
from tests.support.memory import MemoryTransport

ADD = "app.tasks.example:add"


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"order-{uuid.uuid4()}"}


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "tab\t", "é"])
def test_bad_keys_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_key(bad)


def test_fingerprint_ignores_key_order_only() -> None:
    assert fingerprint("t", [1], {"a": 1, "b": 2}) == fingerprint("t", [1], {"b": 2, "a": 1})
    assert fingerprint("t", [1], {}) != fingerprint("t", [2], {})
    assert fingerprint("t", [1], {}) != fingerprint("u", [1], {})


async def test_same_key_queues_once(client: httpx.AsyncClient, transport: MemoryTransport) -> None:
    headers = key()
    first = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=headers)
    second = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["task_id"] == second.json()["task_id"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert len(transport.published) == 1


async def test_concurrent_retries_queue_once(
    client: httpx.AsyncClient, transport: MemoryTransport
) -> None:
    headers = key()
    answers = await asyncio.gather(
        *(client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=headers) for _ in range(8))
    )
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert len(transport.published) == 1


async def test_same_key_other_request_is_422(
    client: httpx.AsyncClient, transport: MemoryTransport
) -> None:
    headers = key()
    await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=headers)
    other = await client.post(f"/tasks/{ADD}", json={"args": [1, 3]}, headers=headers)
    assert other.status_code == 422
    assert "other arguments" in other.json()["detail"]
    assert len(transport.published) == 1


async def test_a_failed_first_attempt_is_sent_again_with_its_id(
    client: httpx.AsyncClient, transport: MemoryTransport
) -> None:
    headers = key()
    transport.fail_publish = TimeoutError()
    first = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=headers)
    assert first.status_code == 503
    transport.fail_publish = None
    retry = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=headers)
    assert retry.status_code == 202
    assert retry.headers["idempotent-replayed"] == "true"
    [sent] = transport.published
    assert sent.headers["Nats-Msg-Id"] == retry.json()["task_id"]


async def test_an_unconfirmed_and_too_old_dispatch_is_409_unless_it_ran(
    broker: KiqBroker, transport: MemoryTransport
) -> None:
    task = broker.find_task(ADD)
    assert task is not None
    store = IdempotencyStore(broker)
    assert store.republish_window == broker.duplicate_window - 10
    old = Record("old-task", ADD, fingerprint(ADD, [1, 2], {}), "pending", time.time() - 3600)
    assert await store.claim("k-old", old) is None
    with pytest.raises(IdempotencyUnconfirmedError) as info:
        await dispatch_once(broker, task, "k-old", [1, 2], {})
    assert "old-task" in str(info.value)
    await broker.results.redis.set(broker.results.result_key("old-task"), b"{}")
    outcome = await dispatch_once(broker, task, "k-old", [1, 2], {})
    assert outcome.task_id == "old-task"
    assert outcome.replayed
    assert not transport.published


async def test_a_message_too_large_releases_the_key(
    broker: KiqBroker, transport: MemoryTransport, settings
) -> None:
    echo = broker.find_task("kiqstack.echo")
    assert echo is not None
    store = IdempotencyStore(broker)
    with pytest.raises(Exception, match="exceeds the limit"):
        await dispatch_once(broker, echo, "k-big", ["x" * settings.max_payload_bytes], {})
    assert await store.redis.get(store.redis_key("k-big")) is None


async def test_kiq_once_shares_the_records(broker: KiqBroker, transport: MemoryTransport) -> None:
    add = broker.find_task(ADD)
    assert add is not None
    first = await kiq_once(add, "py-key", 2, 3)
    again = await kiq_once(add, "py-key", 2, 3)
    assert first.task_id == again.task_id
    assert len(transport.published) == 1
    with pytest.raises(IdempotencyKeyReusedError):
        await kiq_once(add, "py-key", 2, 4)


async def test_kiq_once_needs_a_kiqstack_task() -> None:
    from taskiq import InMemoryBroker

    other = InMemoryBroker()

    @other.task
    async def stray() -> None: ...

    with pytest.raises(TypeError, match="kiqstack's broker"):
        await kiq_once(stray, "k")


async def test_a_broker_failure_keeps_the_key_pending(
    broker: KiqBroker, transport: MemoryTransport
) -> None:
    add = broker.find_task(ADD)
    assert add is not None
    transport.fail_publish = ConnectionError("down")
    with pytest.raises(DispatchError):
        await dispatch_once(broker, add, "k-down", [1, 2], {})
    store = IdempotencyStore(broker)
    raw: Any = await store.redis.get(store.redis_key("k-down"))
    assert Record.loads(raw).state == "pending"
