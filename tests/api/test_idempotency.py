"""Idempotent dispatch against real NATS JetStream and Redis: a retried dispatch runs once."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import nats
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from app.config import Settings
from app.errors import IdempotencyKeyReusedError
from app.idempotency import IdempotencyStore, Record, kiq_once
from app.main import create_app
from app.tasks import example
from app.tasks.broker import broker
from scripts.localinfra import Server
from tests.support.stack import Stack, metric_value, poll
from tests.support.tcp_proxy import StallingProxy

pytestmark = pytest.mark.integration

ADD = "app.tasks.example:add"


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"order-{uuid.uuid4()}"}


async def _stream_state(settings: Settings) -> tuple[int, int]:
    """(messages in the task stream now, messages it ever stored)."""
    conn = await nats.connect(settings.nats_url)
    try:
        state = (await conn.jetstream().stream_info(settings.nats_stream)).state
        return state.messages, state.last_seq
    finally:
        await conn.close()


async def test_same_key_queues_once(client: httpx.AsyncClient, settings: Settings) -> None:
    key = _key()
    first = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=key)
    again = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["task_id"] == first.json()["task_id"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await _stream_state(settings) == (1, 1)
    # kwargs in another order are the same request
    kwargs = await client.post(f"/tasks/{ADD}", json={"kwargs": {"a": 1, "b": 2}}, headers=_key())
    key2 = {"Idempotency-Key": kwargs.request.headers["idempotency-key"]}
    swapped = await client.post(f"/tasks/{ADD}", json={"kwargs": {"b": 2, "a": 1}}, headers=key2)
    assert swapped.json()["task_id"] == kwargs.json()["task_id"]


async def test_concurrent_retries_queue_once(client: httpx.AsyncClient, settings: Settings) -> None:
    key = _key()
    answers = await asyncio.gather(
        *(client.post(f"/tasks/{ADD}", json={"args": [3, 4]}, headers=key) for _ in range(10))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert await _stream_state(settings) == (1, 1)


@pytest.mark.parametrize(
    ("path", "body"),
    [(f"/tasks/{ADD}", {"args": [1, 3]}), ("/tasks/app.tasks.example:noop", {})],
)
async def test_same_key_other_request_is_422(
    client: httpx.AsyncClient, settings: Settings, path: str, body: dict
) -> None:
    key = _key()
    assert (
        await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=key)
    ).status_code == 202
    other = await client.post(path, json=body, headers=key)
    assert other.status_code == 422
    assert (
        "was used for task 'app.tasks.example:add' with other arguments" in other.json()["detail"]
    )
    assert await _stream_state(settings) == (1, 1)


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
async def test_bad_key_is_422(client: httpx.AsyncClient, settings: Settings, key: str) -> None:
    response = await client.post(
        f"/tasks/{ADD}", json={"args": [1, 2]}, headers={"Idempotency-Key": key.encode()}
    )
    assert response.status_code == 422
    assert "Idempotency-Key must be 1 to 255 printable ASCII" in response.json()["detail"]
    assert await _stream_state(settings) == (0, 0)


async def test_record_lives_for_the_window(client: httpx.AsyncClient, settings: Settings) -> None:
    key = _key()
    await client.post(f"/tasks/{ADD}", json={"args": [1, 2]}, headers=key)
    store = IdempotencyStore(broker)
    name = store.redis_key(key["Idempotency-Key"])
    async with Redis.from_url(settings.redis_url) as redis:
        record = Record.loads(await redis.get(name))
        ttl = await redis.ttl(name)
    assert record.state == "queued"
    assert settings.idempotency_ttl_seconds - 60 < ttl <= settings.idempotency_ttl_seconds


async def test_unconfirmed_first_attempt_is_sent_again_with_its_id(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # The state a first attempt leaves when NATS never confirmed it (503): a pending record.
    key = _key()["Idempotency-Key"]
    store = IdempotencyStore(broker)
    pending = Record("a" * 32, ADD, _fingerprint([5, 6]), "pending", time.time())
    async with Redis.from_url(settings.redis_url) as redis:
        await redis.set(store.redis_key(key), pending.dumps())
    retry = await client.post(
        f"/tasks/{ADD}", json={"args": [5, 6]}, headers={"Idempotency-Key": key}
    )
    assert retry.status_code == 202
    assert retry.json()["task_id"] == "a" * 32
    assert await _stream_state(settings) == (1, 1)


async def test_unconfirmed_and_too_old_is_409_unless_it_ran(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    key = _key()["Idempotency-Key"]
    store = IdempotencyStore(broker)
    old = Record("b" * 32, ADD, _fingerprint([7, 8]), "pending", time.time() - 3600)
    async with Redis.from_url(settings.redis_url) as redis:
        await redis.set(store.redis_key(key), old.dumps())
        headers = {"Idempotency-Key": key}
        late = await client.post(f"/tasks/{ADD}", json={"args": [7, 8]}, headers=headers)
        assert late.status_code == 409
        assert "older than the duplicate window" in late.json()["detail"]
        assert "b" * 32 in late.json()["detail"]
        assert await _stream_state(settings) == (0, 0)  # not sent again: it might run twice
        # It did run after all (its result is there): the retry gets that task.
        await redis.set(broker.results.result_key("b" * 32), b'{"is_err": false}')
        ran = await client.post(f"/tasks/{ADD}", json={"args": [7, 8]}, headers=headers)
    assert ran.status_code == 202
    assert ran.json()["task_id"] == "b" * 32


def _fingerprint(args: list) -> str:
    from app.idempotency import fingerprint

    return fingerprint(ADD, args, {})


async def test_kiq_once_from_python_shares_the_keys(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    key = f"py-{uuid.uuid4()}"
    first = await kiq_once(example.add, key, 1, 2)
    again = await kiq_once(example.add, key, 1, 2)
    assert again.task_id == first.task_id
    over_http = await client.post(
        f"/tasks/{ADD}", json={"args": [1, 2]}, headers={"Idempotency-Key": key}
    )
    assert over_http.json()["task_id"] == first.task_id
    with pytest.raises(IdempotencyKeyReusedError):
        await kiq_once(example.add, key, 1, 3)
    assert await _stream_state(settings) == (1, 1)


async def test_key_is_shared_by_api_replicas(
    client: httpx.AsyncClient, stack: Stack, settings: Settings
) -> None:
    other_replica = stack.role("server")
    key = _key()
    first = httpx.post(
        f"{other_replica.probe_url}/tasks/{ADD}", json={"args": [2, 2]}, headers=key, timeout=10
    )
    assert first.status_code == 202, first.text
    here = await client.post(f"/tasks/{ADD}", json={"args": [2, 2]}, headers=key)
    assert here.json()["task_id"] == first.json()["task_id"]
    assert await _stream_state(settings) == (1, 1)


async def test_retry_after_a_stalled_publish_runs_once(
    nats: Server, settings: Settings, stack: Stack
) -> None:
    """NATS stores the message but its acknowledgement never arrives: 503, then a retry."""
    worker = stack.role("worker")
    proxy = StallingProxy(nats.host, nats.port)
    port = await proxy.start()
    app = create_app(settings.model_copy(update={"nats_url": [f"nats://127.0.0.1:{port}"]}))
    key = _key()
    try:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kiqstack") as api:
                proxy.hold()
                stalled = await api.post(f"/tasks/{ADD}", json={"args": [20, 22]}, headers=key)
                assert stalled.status_code == 503
                assert "may or may not be queued" in stalled.json()["detail"]
                proxy.release()
                retry = await api.post(
                    f"/tasks/{ADD}?wait=20", json={"args": [20, 22]}, headers=key
                )
                assert retry.status_code == 200, retry.text
                assert retry.headers["idempotent-replayed"] == "true"
                assert retry.json()["result"] == 42
    finally:
        await proxy.close()
    # The first message did land; the retry's copy was dropped by JetStream (same message id).
    assert await _stream_state(settings) == (0, 1)
    executions = poll(
        lambda: metric_value(worker.metrics(), "kiqstack_tasks_succeeded_total", task_name=ADD),
        10,
        lambda: worker.logs(),
    )
    assert executions == 1
    assert metric_value(worker.metrics(), "kiqstack_tasks_received_total", task_name=ADD) == 1
