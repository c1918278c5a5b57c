"""The broker through the seed's own API (``.kiq()``, ``wait_result``), on real NATS and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import RetentionPolicy, StreamConfig
from taskiq.exceptions import SendTaskError

from app.broker import KiqBroker
from app.config import Settings
from app.errors import PayloadTooLargeError, StreamConfigError
from app.tasks.broker import broker as shared_broker
from app.tasks.example import example_task, noop, risky_task
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def client_broker(settings: Settings) -> AsyncIterator[KiqBroker]:
    shared_broker.configure(settings)
    await shared_broker.startup()
    yield shared_broker
    await shared_broker.shutdown()


async def test_seed_snippets(client_broker: KiqBroker, stack: Stack) -> None:
    stack.role("worker")
    task = await example_task.kiq("data", 3)
    result = await task.wait_result(timeout=30)
    assert not result.is_err
    assert result.return_value == "Processed: data, 3"

    task = await risky_task.kiq()
    result = await task.wait_result(timeout=10)
    assert result.is_err
    assert isinstance(result.error, ValueError)
    assert str(result.error) == "Something went wrong"


async def _stream_messages(settings: Settings) -> int:
    conn = await nats.connect(settings.nats_url)
    try:
        return (await conn.jetstream().stream_info(settings.nats_stream)).state.messages
    finally:
        await conn.close()


async def test_oversized_message_is_refused_before_sending(
    client_broker: KiqBroker, settings: Settings
) -> None:
    with pytest.raises(SendTaskError) as info:
        await example_task.kiq("x" * settings.max_payload_bytes, 1)
    assert isinstance(info.value.__cause__, PayloadTooLargeError)
    assert "exceeds the limit of 524288 bytes" in str(info.value.__cause__)
    assert await _stream_messages(settings) == 0
    await noop.kiq()  # a normal message still goes through
    assert await _stream_messages(settings) == 1


async def test_same_task_id_is_stored_once(client_broker: KiqBroker, settings: Settings) -> None:
    kicker = noop.kicker().with_task_id("fixed-id-1")
    await kicker.kiq()
    await kicker.kiq()  # a retried publish: JetStream de-duplicates on Nats-Msg-Id
    assert await _stream_messages(settings) == 1


async def test_incompatible_existing_stream_fails_startup(settings: Settings) -> None:
    conn = await nats.connect(settings.nats_url)
    try:
        await conn.jetstream().add_stream(
            StreamConfig(
                name=settings.nats_stream,
                subjects=[settings.nats_subject],
                retention=RetentionPolicy.LIMITS,
            )
        )
    finally:
        await conn.close()
    broker = KiqBroker(settings)
    with pytest.raises(StreamConfigError) as info:
        await broker.startup()
    await broker.shutdown()
    message = str(info.value)
    assert f"stream {settings.nats_stream!r} exists with an incompatible configuration" in message
    assert "retention is limits, kiqstack needs workqueue" in message


async def test_startup_creates_work_queue_stream_and_consumer(settings: Settings) -> None:
    broker = KiqBroker(settings)
    await broker.startup()
    await broker.shutdown()
    conn = await nats.connect(settings.nats_url)
    try:
        js = conn.jetstream()
        stream = await js.stream_info(settings.nats_stream)
        consumer = await js.consumer_info(settings.nats_stream, settings.nats_consumer)
        dead = await js.stream_info(settings.nats_dead_letter_stream)
    finally:
        await conn.close()
    assert stream.config.retention == RetentionPolicy.WORK_QUEUE
    assert stream.config.subjects == [settings.nats_subject]
    assert consumer.config.durable_name == settings.nats_consumer
    assert consumer.config.ack_wait == settings.ack_wait_seconds
    assert consumer.config.max_deliver == settings.max_deliver + 1
    assert dead.config.retention == RetentionPolicy.LIMITS
