"""The delivery pipeline (app.delivery) in memory: admit, settle, give back, dead-letter."""

from __future__ import annotations

import json

import pytest
from nats.aio.msg import Msg
from taskiq import TaskiqMessage

from app import metrics
from app.broker import KiqBroker
from app.delivery import Action, DeliveryPipeline, Refusal
from app.results.backend import _save_failed
from app.wire import (
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SEQUENCE_HEADER,
    MSG_ID_HEADER,
    TASK_NAME_HEADER,
)
from tests.support.memory import NAK, MemoryTransport
from tests.support.stack import metric_value

ADD = "app.tasks.example:add"


def body(task_id: str = "t1", task_name: str = ADD, **extra: object) -> bytes:
    message = {"task_id": task_id, "task_name": task_name, "labels": {}, "args": [1, 2]}
    message["kwargs"] = {}
    message.update(extra)
    return json.dumps(message).encode()


def worker_metric(name: str, **labels: str) -> float:
    try:
        return metric_value(metrics.worker_exposition()[0].decode(), name, **labels)
    except KeyError:
        return 0.0


@pytest.fixture
def pipeline(broker: KiqBroker) -> DeliveryPipeline:
    return broker.pipeline


def held(transport: MemoryTransport, msg: Msg) -> Msg:
    transport.inflight.hold(msg)
    return msg


async def test_a_valid_delivery_is_handed_out(
    pipeline: DeliveryPipeline, transport: MemoryTransport
) -> None:
    msg = held(transport, transport.delivery(body(), {TASK_NAME_HEADER: ADD}))
    delivery = await pipeline.admit(msg)
    assert delivery is not None
    assert delivery.data == msg.data
    assert msg.reply in transport.inflight  # held until settled
    await delivery.ack()
    assert transport.client.answers(msg) == [b""]
    assert msg.reply not in transport.inflight


@pytest.mark.parametrize(
    ("data", "headers", "reason"),
    [
        (b"not json", {}, "unparseable"),
        (body(), {TASK_NAME_HEADER: "app.tasks.example:noop"}, "task-name-mismatch"),
        (body("evil\nid"), {}, "invalid-task-id"),
        (body(labels={"ack_type": "bogus"}), {}, "invalid-label"),
        (body(labels={"timeout": "soon"}), {}, "invalid-label"),
    ],
)
async def test_invalid_deliveries_are_dead_lettered_with_their_reason(
    pipeline: DeliveryPipeline,
    transport: MemoryTransport,
    data: bytes,
    headers: dict[str, str],
    reason: str,
) -> None:
    before = worker_metric("kiqstack_tasks_dead_lettered_total", reason=reason)
    msg = held(transport, transport.delivery(data, {**headers, MSG_ID_HEADER: "x"}))
    assert await pipeline.admit(msg) is None
    [letter] = transport.dead_letters
    assert letter.payload == data
    assert letter.headers[DEAD_LETTER_REASON_HEADER] == reason
    assert letter.headers[DEAD_LETTER_DETAIL_HEADER]
    assert letter.headers[DEAD_LETTER_DELIVERIES_HEADER] == "1"
    assert letter.headers[DEAD_LETTER_SEQUENCE_HEADER] == str(msg.metadata.sequence.stream)
    assert MSG_ID_HEADER not in letter.headers  # the dead-letter stream keeps every copy
    assert transport.client.answers(msg) == [b""]  # acked once stored
    assert msg.reply not in transport.inflight
    assert worker_metric("kiqstack_tasks_dead_lettered_total", reason=reason) == before + 1


async def test_an_unknown_task_is_given_back_with_a_growing_delay(
    pipeline: DeliveryPipeline, transport: MemoryTransport, caplog
) -> None:
    unknown = body(task_name="not.here")
    first = held(transport, transport.delivery(unknown, delivered=1))
    second = held(transport, transport.delivery(unknown, delivered=2))
    assert await pipeline.admit(first) is None
    assert await pipeline.admit(second) is None
    naks = [json.loads(transport.client.answers(m)[0][5:]) for m in (first, second)]
    assert [n["delay"] for n in naks] == [500_000_000, 1_000_000_000]  # 0.5 s, then 1 s
    assert "is not registered in this worker (delivery 1 of 5)" in caplog.text
    assert not transport.dead_letters


async def test_the_last_delivery_of_an_unknown_task_is_dead_lettered(
    pipeline: DeliveryPipeline, transport: MemoryTransport, settings
) -> None:
    last = held(transport, transport.delivery(body(task_name="not.here"), delivered=5))
    assert await pipeline.admit(last) is None
    [letter] = transport.dead_letters
    assert letter.headers[DEAD_LETTER_REASON_HEADER] == "unknown-task"
    over = held(transport, transport.delivery(body(), delivered=settings.max_deliver + 1))
    assert await pipeline.admit(over) is None
    assert transport.dead_letters[-1].headers[DEAD_LETTER_REASON_HEADER] == "max-deliver"


async def test_a_dead_letter_that_cannot_be_stored_stays_queued(
    pipeline: DeliveryPipeline, transport: MemoryTransport, caplog
) -> None:
    transport.fail_dead_letter = ConnectionError("no dead-letter stream")
    msg = held(transport, transport.delivery(b"garbage"))
    assert await pipeline.admit(msg) is None
    [answer] = transport.client.answers(msg)
    assert answer.startswith(NAK)  # never acked, never dropped
    assert "could not dead-letter message" in caplog.text


async def test_redeliveries_and_queue_wait_are_measured(
    pipeline: DeliveryPipeline, transport: MemoryTransport
) -> None:
    before = worker_metric("kiqstack_task_redeliveries_total", task_name=ADD)
    waits = worker_metric("kiqstack_task_queue_wait_seconds_count", task_name=ADD)
    assert await pipeline.admit(held(transport, transport.delivery(body(), delivered=2)))
    assert await pipeline.admit(held(transport, transport.delivery(body(), delivered=1)))
    assert worker_metric("kiqstack_task_redeliveries_total", task_name=ADD) == before + 1
    assert worker_metric("kiqstack_task_queue_wait_seconds_count", task_name=ADD) == waits + 1


async def test_a_result_not_saved_gives_the_delivery_back(
    pipeline: DeliveryPipeline, transport: MemoryTransport, caplog
) -> None:
    before = worker_metric("kiqstack_tasks_given_back_total", reason="result-not-saved")
    msg = held(transport, transport.delivery(body()))
    delivery = await pipeline.admit(msg)
    assert delivery is not None
    token = _save_failed.set(True)
    try:
        await delivery.ack()
    finally:
        _save_failed.reset(token)
    [answer] = transport.client.answers(msg)
    assert answer.startswith(NAK)
    assert "could not be saved" in caplog.text
    assert worker_metric("kiqstack_tasks_given_back_total", reason="result-not-saved") == (
        before + 1
    )


async def test_an_ack_that_fails_costs_a_log_line(
    pipeline: DeliveryPipeline, transport: MemoryTransport, caplog
) -> None:
    msg = held(transport, transport.delivery(body()))
    delivery = await pipeline.admit(msg)
    assert delivery is not None
    transport.client.fail = ConnectionError("connection closed")
    await delivery.ack()  # does not raise
    assert "could not acknowledge message" in caplog.text
    assert msg.reply not in transport.inflight


async def test_an_admission_failure_costs_a_log_line(
    pipeline: DeliveryPipeline, transport: MemoryTransport, caplog
) -> None:
    transport.client.fail = ConnectionError("gone")
    msg = held(transport, transport.delivery(body(task_name="not.here")))
    assert await pipeline.admit_safely(msg) is None
    assert "could not take a delivery" in caplog.text
    assert msg.reply not in transport.inflight


async def test_extra_checks_refuse_in_order(
    pipeline: DeliveryPipeline, transport: MemoryTransport
) -> None:
    seen: list[str] = []

    async def cancelled(msg: Msg, message: TaskiqMessage) -> Refusal | None:
        seen.append(message.task_id)
        if message.task_id == "cancel-me":
            return Refusal(Action.DEAD_LETTER, "cancelled", "cancelled by its owner")
        if message.task_id == "later":
            return Refusal(Action.GIVE_BACK, "not-yet")
        return None

    pipeline.add_check(cancelled)
    assert await pipeline.admit(held(transport, transport.delivery(body("fine"))))
    assert await pipeline.admit(held(transport, transport.delivery(body("cancel-me")))) is None
    later = held(transport, transport.delivery(body("later")))
    assert await pipeline.admit(later) is None
    assert seen == ["fine", "cancel-me", "later"]
    assert transport.dead_letters[-1].headers[DEAD_LETTER_REASON_HEADER] == "cancelled"
    assert transport.client.answers(later)[0].startswith(NAK)


async def test_settlers_may_settle_a_delivery_themselves(
    pipeline: DeliveryPipeline, transport: MemoryTransport
) -> None:
    settled: list[str] = []

    async def retry_later(msg: Msg) -> bool:
        if b'"retry"' in msg.data:
            settled.append(msg.reply)
            await msg.term()
            return True
        return False

    pipeline.add_settler(retry_later)
    retried = held(transport, transport.delivery(body("retry")))
    normal = held(transport, transport.delivery(body("normal")))
    for msg in (retried, normal):
        delivery = await pipeline.admit(msg)
        assert delivery is not None
        await delivery.ack()
    assert settled == [retried.reply]
    assert transport.client.answers(retried) == [b"+TERM"]
    assert transport.client.answers(normal) == [b""]


def test_redelivery_delay_doubles_up_to_the_ack_wait(pipeline: DeliveryPipeline) -> None:
    delays = [pipeline.redelivery_delay(n) for n in range(1, 12)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert max(delays) == pipeline.settings.ack_wait_seconds
