"""Delayed dispatch, cancellation and progress in memory; the headers a copy never carries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.broker import KiqBroker
from app.errors import ScheduleError
from app.lifecycle.definitions import DELAYED, definition_subject, due_time, parse_eta
from app.lifecycle.delayed import kiq_at, kiq_in
from app.wire import (
    MSG_ID_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULE_TARGET_HEADER,
    SCHEDULER_HEADER,
    dead_letter_headers,
    own_headers,
    replay_headers,
)
from tests.support.memory import MemoryTransport
from tests.support.worker import InProcessWorker

ECHO = "kiqstack.echo"


def test_due_time_rules() -> None:
    assert due_time({}, 100) is None
    assert due_time({"delay": 0}, 100) is None
    due = due_time({"delay": "5"}, 100)
    assert due is not None
    assert 4 < (due - datetime.now(UTC)).total_seconds() <= 5
    with pytest.raises(ScheduleError, match="0 or more"):
        due_time({"delay": -1}, 100)
    with pytest.raises(ScheduleError, match="MAX_SCHEDULE_DELAY_SECONDS"):
        due_time({"delay": 101}, 100)
    with pytest.raises(ScheduleError, match="not both"):
        due_time({"delay": 1, "eta": "2030-01-01T00:00:00Z"}, 10**9)
    with pytest.raises(ScheduleError, match="time zone"):
        parse_eta("2030-01-01T00:00:00")
    assert parse_eta("2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=UTC)


def test_copies_never_carry_jetstream_headers() -> None:
    generated = {
        "Kiq-Task-Name": "x",
        SCHEDULER_HEADER: "kiqstack.schedules.delayed.t",
        SCHEDULE_NEXT_HEADER: "purge",
        MSG_ID_HEADER: "t",
    }
    assert own_headers(generated) == {"Kiq-Task-Name": "x"}
    letter = dead_letter_headers(generated, reason="r", detail="", deliveries=1, sequence=1, at=0.0)
    assert not [k for k in letter if k.startswith("Nats-")]
    replayed = replay_headers({**generated, **letter}, task_id="t", sequence=3)
    assert [k for k in replayed if k.startswith("Nats-")] == [MSG_ID_HEADER]


async def test_a_delayed_task_is_a_definition_until_it_fires(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker
) -> None:
    await broker.startup()
    task = await kiq_in(broker.find_task(ECHO), 60, "later")  # type: ignore[arg-type]
    subject = definition_subject(broker.settings, DELAYED, task.task_id)
    stored = transport.definitions[subject]
    assert stored.headers[SCHEDULE_HEADER].startswith("@at ")
    assert stored.headers[SCHEDULE_TARGET_HEADER] == broker.settings.nats_subject
    assert transport.published == []  # nothing queued yet
    record = await broker.results.read_record(task.task_id)
    assert record.state is not None
    assert record.state["status"] == "scheduled"
    transport.fire(subject)
    result = await task.wait_result(timeout=5)
    assert result.return_value == "later"
    with pytest.raises(ScheduleError):
        await kiq_at(broker.find_task(ECHO), datetime(2030, 1, 1), "x")  # type: ignore[arg-type]
    with pytest.raises(ScheduleError):
        await kiq_in(broker.find_task(ECHO), -(10**9), "x")  # type: ignore[arg-type]
    await broker.shutdown()


async def test_api_delay_cancel_and_status(
    client: httpx.AsyncClient, transport: MemoryTransport, broker: KiqBroker
) -> None:
    eta = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    answer = await client.post(f"/tasks/{ECHO}", json={"args": [1], "eta": eta})
    assert answer.status_code == 202
    task_id = answer.json()["task_id"]
    status = (await client.get(f"/tasks/{task_id}")).json()
    assert status["status"] == "scheduled"
    assert status["eta"]
    answer = await client.delete(f"/tasks/{task_id}")
    assert answer.status_code == 200
    assert answer.json() == {"task_id": task_id, "status": "cancelled"}
    assert transport.definitions == {}
    assert (await client.get(f"/tasks/{task_id}")).json()["status"] == "cancelled"
    queued = (await client.post(f"/tasks/{ECHO}", json={"args": [2]})).json()["task_id"]
    answer = await client.delete(f"/tasks/{queued}")
    assert answer.status_code == 202
    assert (await client.get(f"/tasks/{queued}")).json()["cancel_requested"] is True
    assert (await client.delete("/tasks/unknown")).status_code == 404
    for bad in ({"delay_seconds": -1}, {"eta": "2030-01-01T09:00:00"}, {"eta": "soon"}):
        answer = await client.post(f"/tasks/{ECHO}", json={"args": [1], **bad})
        assert answer.status_code == 422, bad


async def test_a_cancelled_queued_task_never_runs(
    client: httpx.AsyncClient, transport: MemoryTransport, broker: KiqBroker
) -> None:
    task_id = (await client.post(f"/tasks/{ECHO}", json={"args": [3]})).json()["task_id"]
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 202
    async with InProcessWorker(broker) as worker:
        assert await broker.results.wait_for_result(task_id, 5)
        await worker.drain()
    status = (await client.get(f"/tasks/{task_id}")).json()
    assert status["status"] == "cancelled"
    assert status["result"] is None
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 200


async def test_a_cancel_flag_that_cannot_be_read_gives_the_task_back(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker
) -> None:
    """Redis restarting while a delivery is admitted: the cancel check cannot answer, so the task
    is given back (a nak with REDELIVERY_DELAY_SECONDS), never run unchecked and never left
    unacknowledged until ACK_WAIT_SECONDS."""
    await broker.startup()
    server = broker.results.redis.connection_pool.connection_kwargs["server"]
    server.connected = False  # fakeredis: every command now fails with ConnectionError
    task = broker.find_task(ECHO)
    assert task is not None
    await task.kicker().with_task_id("c-redis-down").kiq(1)
    answers: list[bytes] = []
    for _ in range(500):
        await asyncio.sleep(0.01)
        await worker.drain()
        answers = [payload for subject, payload in transport.client.sent if "$JS.ACK" in subject]
        if answers:
            break
    # Given back with REDELIVERY_DELAY_SECONDS (0.5 s here, in ns), not acked, not run.
    assert answers == [b'-NAK {"delay": 500000000}']
    server.connected = True
    await broker.shutdown()
