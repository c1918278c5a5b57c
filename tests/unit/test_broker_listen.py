"""The worker's listener against a scripted NATS connection (no server): what pulls bring back.

The real-server behaviour is covered by tests/integration and tests/soak; these tests pin the
listener's own logic on inputs that are hard to produce on demand with a real server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nats.aio.msg import Msg
from taskiq import AckableMessage

from app.broker import KiqBroker
from app.config import Settings, load_settings
from app.jetstream.transport import JetStreamTransport
from app.tasks import example as _example_tasks  # noqa: F401 - registers the tasks
from app.tasks.broker import broker as shared_broker
from tests.support.memory import memory_backend

STREAM, CONSUMER = "kq_unit", "kqw_unit"
_sequence = 0


def task_body(task_name: str = "app.tasks.example:add", task_id: str = "t1") -> bytes:
    return json.dumps(
        {"task_id": task_id, "task_name": task_name, "labels": {}, "args": [1, 2], "kwargs": {}}
    ).encode()


class ScriptedClient:
    """Stands in for a connected nats-py client: answers each pull request from a script."""

    def __init__(self, answers: list[Callable[[ScriptedClient, str], list[Msg]]]) -> None:
        self.answers = answers
        self.pulls: list[dict[str, Any]] = []
        self.published: list[tuple[str, bytes]] = []
        self.deliver: Callable[[Msg], Any] | None = None
        self.is_connected = True
        self.is_closed = False

    def new_inbox(self) -> str:
        return "_INBOX.unit"

    async def subscribe(self, subject: str, cb: Callable[[Msg], Any]) -> Any:
        self.deliver = cb
        return self

    async def unsubscribe(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", **_: Any) -> None:
        self.published.append((subject, payload))
        if not subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            return
        self.pulls.append(json.loads(payload))
        script = self.answers.pop(0) if self.answers else (lambda c, r: [])
        for msg in script(self, reply):
            asyncio.get_running_loop().call_soon(
                lambda m=msg: asyncio.ensure_future(self.deliver(m))
            )

    def message(self, data: bytes, delivered: int = 1) -> Msg:
        global _sequence
        _sequence += 1
        reply = (
            f"$JS.ACK.{STREAM}.{CONSUMER}.{delivered}.{_sequence}.{_sequence}.1700000000000000000.0"
        )
        return Msg(_client=self, subject="kq.unit.tasks", reply=reply, data=data, headers=None)

    def status(self, code: str, description: str) -> Msg:
        headers = {"Status": code, "Description": description}
        return Msg(_client=self, subject="_INBOX.unit", reply="", data=b"", headers=headers)

    def progress_signals(self, reply: str) -> int:
        return sum(
            1 for subject, payload in self.published if subject == reply and payload == b"+WPI"
        )


def expired(client: ScriptedClient, _: str) -> list[Msg]:
    """The pull request expired with nothing to deliver (what used to crash an idle worker)."""
    return [client.status("408", "Request Timeout")]


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        nats_stream=STREAM,
        nats_consumer=CONSUMER,
        ack_wait_seconds=1.5,
        worker_concurrency=4,
        worker_fetch_batch=4,
    )


def transport(broker: KiqBroker) -> JetStreamTransport:
    jetstream = broker.transport
    assert isinstance(jetstream, JetStreamTransport)
    return jetstream


async def started(broker: KiqBroker, client: ScriptedClient) -> KiqBroker:
    jetstream = transport(broker)
    jetstream.connection.client = client  # type: ignore[assignment]
    jetstream.listener.reset()
    await jetstream.listener.start()
    return broker


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[KiqBroker]:
    shared_broker.configure(settings)
    # Admission asks the result store for a cancel flag: fakeredis, not a Redis server.
    shared_broker.result_backend = memory_backend(settings)
    yield shared_broker
    transport(shared_broker).inflight.stop()
    transport(shared_broker).inflight.clear()


async def next_delivery(listener: Any) -> AckableMessage:
    delivery: AckableMessage = await asyncio.wait_for(anext(listener), 10)
    return delivery


async def test_empty_pulls_do_not_stop_the_listener(broker: KiqBroker) -> None:
    client = ScriptedClient(
        [expired, expired, lambda c, _: [c.message(task_body(task_id="after-idle"))]]
    )
    await started(broker, client)
    listener = broker.listen()
    delivery = await next_delivery(listener)
    assert json.loads(delivery.data)["task_id"] == "after-idle"
    assert len(client.pulls) == 3
    assert all(pull["expires"] > 0 for pull in client.pulls)  # every pull request expires
    await listener.aclose()


async def test_deliveries_not_yet_handed_out_are_kept_alive(broker: KiqBroker) -> None:
    """A delivery waiting for the receiver still gets in-progress signals (no double run)."""
    client = ScriptedClient(
        [lambda c, _: [c.message(task_body(task_id=f"t{i}")) for i in range(3)]]
    )
    await started(broker, client)
    listener = broker.listen()
    await next_delivery(listener)  # the receiver takes one; two stay in the worker's hands
    handed_out, *waiting = transport(broker).inflight.held
    assert len(waiting) == 2
    await asyncio.sleep(1.2)  # more than a keep-alive interval (ack wait 1.5 s / 3)
    for reply in waiting:
        assert client.progress_signals(reply) >= 1
    await listener.aclose()
    # Given back (nak) when the receiver stops, not left to run out their ack wait.
    for reply in waiting:
        assert (reply, b"-NAK") in client.published
    assert list(transport(broker).inflight.held) == [
        handed_out
    ]  # the running one stays until its ack


async def test_pull_requests_never_ask_for_more_than_the_free_capacity(
    broker: KiqBroker,
) -> None:
    one_then_expired = [lambda c, r: [c.message(task_body(task_id="a")), *expired(c, r)]]
    client = ScriptedClient(one_then_expired)  # then a pull request that stays open
    await started(broker, client)
    listener = broker.listen()
    await next_delivery(listener)
    pending = asyncio.ensure_future(anext(listener))
    await asyncio.sleep(0.05)
    assert [pull["batch"] for pull in client.pulls] == [4, 3]  # one task holds a slot
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await listener.aclose()


async def test_missing_consumer_is_not_hammered(broker: KiqBroker, monkeypatch) -> None:
    """503 (no consumer): back off between pulls and start recreating the consumer."""
    repairs = []
    monkeypatch.setattr(transport(broker).watch, "start_repair", lambda: repairs.append(1))
    no_responders = [lambda c, _: [c.status("503", "")] for _ in range(50)]
    client = ScriptedClient(no_responders)
    await started(broker, client)
    listener = broker.listen()
    pending = asyncio.ensure_future(anext(listener))
    await asyncio.sleep(1.0)
    assert 1 <= len(client.pulls) <= 4  # 0.5 s, then 1 s between attempts: no busy loop
    assert repairs
    assert transport(broker).watch.problem is not None
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    transport(broker).watch.problem = None


async def test_ack_failure_costs_a_log_line_not_the_worker(broker: KiqBroker, caplog) -> None:
    client = ScriptedClient([lambda c, _: [c.message(task_body())]])
    await started(broker, client)
    listener = broker.listen()
    delivery = await next_delivery(listener)

    async def broken(*_: Any, **__: Any) -> None:
        raise ConnectionError("connection closed")

    client.publish = broken  # type: ignore[method-assign]
    await delivery.ack()  # does not raise
    assert "could not acknowledge message" in caplog.text
    assert not transport(broker).inflight.held
    await listener.aclose()
