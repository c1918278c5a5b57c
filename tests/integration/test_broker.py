"""The broker through the seed's own API (``.kiq()``, ``wait_result``), on real NATS and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from taskiq.exceptions import SendTaskError

from app.broker import KiqBroker
from app.config import Settings
from app.errors import (
    InvalidTaskIdError,
    NatsUnavailableError,
    PayloadTooLargeError,
    StreamConfigError,
)
from app.tasks.broker import broker as shared_broker
from app.tasks.broker import build_broker
from app.tasks.example import example_task, noop, risky_task
from scripts.localinfra import free_port
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


async def test_a_stream_of_an_earlier_version_is_updated_in_place(
    settings: Settings, stack: Stack
) -> None:
    """Upgrade: a stream without schedules and an unfiltered consumer, with a task queued."""
    conn = await nats.connect(settings.nats_url)
    try:
        js = conn.jetstream()
        await js.add_stream(
            StreamConfig(
                name=settings.nats_stream,
                subjects=[settings.nats_subject],
                retention=RetentionPolicy.WORK_QUEUE,
            )
        )
        await js.add_consumer(
            settings.nats_stream, ConsumerConfig(durable_name=settings.nats_consumer)
        )
    finally:
        await conn.close()
    broker = build_broker(settings)
    await broker.startup()
    try:
        queued = await broker.find_task("kiqstack.echo").kiq("before")  # type: ignore[union-attr]
        delayed = await broker.find_task("kiqstack.echo").kicker().with_labels(delay=1).kiq("after")  # type: ignore[union-attr]
        conn = await nats.connect(settings.nats_url)
        try:
            js = conn.jetstream()
            stream = await js.stream_info(settings.nats_stream)
            consumer = await js.consumer_info(settings.nats_stream, settings.nats_consumer)
        finally:
            await conn.close()
        assert stream.config.allow_msg_schedules is True
        assert consumer.config.filter_subject == settings.nats_subject
        stack.role("worker")
        assert (await queued.wait_result(timeout=60)).return_value == "before"
        assert (await delayed.wait_result(timeout=60)).return_value == "after"
    finally:
        await broker.shutdown()


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
    assert stream.config.subjects == [
        settings.nats_subject,
        f"{settings.nats_subject}.*",
        f"{settings.nats_schedule_subject}.>",
    ]
    assert stream.config.allow_msg_schedules is True
    assert consumer.config.filter_subject == settings.nats_subject
    assert consumer.config.durable_name == settings.nats_consumer
    assert consumer.config.filter_subject == settings.nats_subject
    assert consumer.config.ack_wait == settings.ack_wait_seconds
    assert consumer.config.max_deliver == settings.max_deliver + 1
    assert dead.config.retention == RetentionPolicy.LIMITS


async def test_startup_gives_up_with_an_error_naming_nats_url(settings: Settings, caplog) -> None:
    """NATS down: ``broker.startup()`` in a user's script fails in time, without the password."""
    url = f"nats://kiq:s3cret@127.0.0.1:{free_port()}"
    broker = KiqBroker(
        settings.model_copy(update={"nats_url": [url], "nats_connect_timeout_seconds": 1.5})
    )
    with pytest.raises(NatsUnavailableError) as info:
        await asyncio.wait_for(broker.startup(), 30)  # 30 s: the deadline of this test only
    message = str(info.value)
    assert "could not connect to NATS at nats://***@127.0.0.1:" in message
    assert "within 1.5s" in message
    assert "check NATS_URL" in message
    assert "s3cret" not in message
    attempts = [r for r in caplog.records if "cannot reach NATS" in r.getMessage()]
    assert attempts, caplog.text
    assert all(r.exc_info is None for r in caplog.records)  # one line per attempt, no traceback
    assert "s3cret" not in caplog.text


async def _delete_stream(settings: Settings) -> None:
    conn = await nats.connect(settings.nats_url)
    try:
        await conn.jetstream().delete_stream(settings.nats_stream)
    finally:
        await conn.close()


async def test_missing_stream_is_reported_then_recreated(
    client_broker: KiqBroker, settings: Settings
) -> None:
    """Readiness reports a lost stream (NATS restarted without its data) and repairs it."""
    assert await client_broker.jetstream_problem() is None
    await _delete_stream(settings)
    problem = await client_broker.jetstream_problem()
    assert problem is not None
    assert "missing" in problem

    async def repaired() -> None:
        while await client_broker.jetstream_problem() is not None:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(repaired(), 30)
    await noop.kiq()
    assert await _stream_messages(settings) == 1


async def test_dispatch_recreates_a_lost_stream(client_broker: KiqBroker, settings: Settings):
    await _delete_stream(settings)
    await noop.kiq()  # "no response from stream": recreated, then sent again
    assert await _stream_messages(settings) == 1


async def test_unsafe_task_id_is_refused_before_sending(
    client_broker: KiqBroker, settings: Settings
) -> None:
    with pytest.raises(SendTaskError) as info:
        await noop.kicker().with_task_id("two\nlines").kiq()
    assert isinstance(info.value.__cause__, InvalidTaskIdError)
    assert await _stream_messages(settings) == 0
