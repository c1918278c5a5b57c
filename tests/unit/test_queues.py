"""Worker queues without a server: names, settings, routing of a dispatch, per-queue pulls.

The real-server behaviour (routing between worker processes, a full queue not holding up another,
the upgrade of an old stream) is in tests/integration/test_queues.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg
from taskiq import AckableMessage

from app.config import Settings, load_settings
from app.errors import ConfigError, InvalidQueueError
from app.jetstream.transport import JetStreamTransport
from app.queues import check_queue, queue_consumer, queue_of, queue_subject
from app.tasks.broker import broker as shared_broker
from app.tasks.broker import build_broker, register_task
from app.wire import QUEUE_HEADER
from tests.support.memory import MemoryTransport, memory_backend, memory_broker
from tests.unit.test_broker_listen import task_body

BURN = "app.tasks.example:cpu_burn"
ADD = "app.tasks.example:add"


@pytest.mark.parametrize("name", ["default", "cpu", "a", "0", "gpu-large_2", "x" * 32])
def test_good_queue_names(name: str) -> None:
    assert check_queue(name) == name


@pytest.mark.parametrize("name", ["", "CPU", "-cpu", "_cpu", "c.pu", "c pu", "cpu*", "x" * 33, 5])
def test_bad_queue_names_are_refused_with_the_rule(name: object) -> None:
    with pytest.raises(InvalidQueueError, match="use 1 to 32 lower-case letters"):
        check_queue(name)


def test_names_of_a_queue() -> None:
    assert queue_subject("kiqstack.tasks", "default") == "kiqstack.tasks"
    assert queue_subject("kiqstack.tasks", "cpu") == "kiqstack.tasks.cpu"
    assert queue_consumer("kiqstack_workers", "default") == "kiqstack_workers"
    assert queue_consumer("kiqstack_workers", "cpu") == "kiqstack_workers_cpu"
    assert queue_of({}) == queue_of(None) == queue_of({"queue": ""}) == "default"
    assert queue_of({"queue": "cpu"}) == "cpu"


def test_a_bad_queue_fails_at_decoration_time() -> None:
    before = set(shared_broker.get_all_tasks())
    with pytest.raises(InvalidQueueError, match="'GPU'"):

        @register_task(task_name="unit.bad_queue", queue="GPU")
        async def bad() -> None: ...

    assert set(shared_broker.get_all_tasks()) == before
    # Also with taskiq's own decorator on a kiqstack broker.
    other = build_broker(load_settings())
    with pytest.raises(InvalidQueueError):
        other.task(task_name="unit.bad_label", queue="no such")(lambda: None)
    assert other.find_task("unit.bad_label") is None


def test_the_example_and_builtin_tasks_name_their_queues() -> None:
    tasks = shared_broker.get_all_tasks()
    assert queue_of(tasks[BURN].labels) == "cpu"
    assert queue_of(tasks[ADD].labels) == "default"
    assert queue_of(tasks["kiqstack.ping"].labels) == "default"
    assert shared_broker.task_queues()[:2] == ["default", "cpu"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Default", "WORKER_QUEUES: invalid queue name 'Default'"),
        ("default,cpu,default", "WORKER_QUEUES: a queue is named twice"),
        (" , ", "WORKER_QUEUES: name at least one queue"),
    ],
)
def test_worker_queues_are_checked(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(worker_queues=value)


def test_worker_queues_are_read_and_set_the_slots() -> None:
    settings = load_settings(worker_queues=" default , cpu ", worker_concurrency=3)
    assert settings.worker_queues == ["default", "cpu"]
    assert settings.worker_slots == 6
    assert load_settings().worker_queues == ["default"]


def test_the_dead_letter_subject_cannot_be_a_queue_subject() -> None:
    with pytest.raises(ConfigError, match="is the subject of queue 'dlq'"):
        load_settings(nats_subject="k.tasks", nats_dead_letter_subject="k.tasks.dlq")


async def test_a_dispatch_goes_to_its_queue_and_waits_there(
    client: httpx.AsyncClient, transport: MemoryTransport, settings: Settings
) -> None:
    response = await client.post(f"/tasks/{BURN}", json={"args": [0]})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    [sent] = transport.published
    assert sent.subject == f"{settings.nats_subject}.cpu"
    assert sent.headers[QUEUE_HEADER] == "cpu"
    assert sent.body["labels"]["queue"] == "cpu"
    assert "cpu" in transport.ensured  # its consumer was made sure of (at startup)
    assert transport.unserved["cpu"] == [sent]  # nobody here serves cpu: not delivered
    status = (await client.get(f"/tasks/{task_id}")).json()
    assert (status["status"], status["queue"]) == ("queued", "cpu")

    add = (await client.post(f"/tasks/{ADD}", json={"args": [1, 2]})).json()["task_id"]
    assert transport.published[-1].subject == settings.nats_subject
    assert transport.published[-1].headers[QUEUE_HEADER] == "default"
    assert (await client.get(f"/tasks/{add}")).json()["queue"] == "default"


async def test_a_result_without_a_record_shows_the_queue_of_its_labels(
    settings: Settings,
) -> None:
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from tests.support.worker import InProcessWorker

    served = settings.model_copy(update={"worker_queues": ["default", "cpu"]})
    broker, _ = memory_broker(served)
    async with LifespanManager(create_app(served, broker=broker)) as manager:
        async with InProcessWorker(broker):
            task = broker.find_task(BURN)
            assert task is not None
            sent = await task.kiq(0)  # .kiq() from code: no dispatch record
            assert not (await sent.wait_result(timeout=10)).is_err
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiqstack") as http:
            status = (await http.get(f"/tasks/{sent.task_id}")).json()
    assert (status["status"], status["task_name"], status["queue"]) == ("success", None, "cpu")


# -- the listener: one pull loop per queue ---------------------------------------------------------
STREAM, CONSUMER = "kq_unit_q", "kqw_unit_q"
Answer = Callable[["QueueClient", str], list[Msg]]


class QueueClient:
    """A connected nats-py client, scripted: an inbox and answers per consumer."""

    def __init__(self, answers: dict[str, list[Answer]]) -> None:
        self.answers = answers
        self.pulls: list[tuple[str, int]] = []  # (consumer, batch)
        self.callbacks: dict[str, Callable[[Msg], Any]] = {}
        self.is_connected = True
        self.is_closed = False
        self._sequence = 0

    def new_inbox(self) -> str:
        return f"_INBOX.unit.{len(self.callbacks)}.{self._sequence}"

    async def subscribe(self, subject: str, cb: Callable[[Msg], Any]) -> Any:
        self.callbacks[subject] = cb
        return self

    async def unsubscribe(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", **_: Any) -> None:
        if not subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            return  # an ack or an in-progress signal
        consumer = subject.rsplit(".", 1)[1]
        self.pulls.append((consumer, json.loads(payload)["batch"]))
        script = self.answers[consumer]
        answer = script.pop(0) if script else (lambda c, r: [])
        callback = self.callbacks[reply]
        for msg in answer(self, consumer):
            asyncio.get_running_loop().call_soon(lambda m=msg: asyncio.ensure_future(callback(m)))

    def message(self, consumer: str, task_id: str) -> Msg:
        self._sequence += 1
        seq = self._sequence
        reply = f"$JS.ACK.{STREAM}.{consumer}.1.{seq}.{seq}.1700000000000000000.0"
        return Msg(
            _client=self,  # type: ignore[arg-type]
            subject="kq.unit.q",
            reply=reply,
            data=task_body(task_id=task_id),
            headers=None,
        )

    def pulls_of(self, consumer: str) -> list[int]:
        return [batch for name, batch in self.pulls if name == consumer]


def messages(*task_ids: str, end: bool = False) -> Answer:
    """Deliver these tasks; with ``end``, then end the pull request (as when nothing is left)."""

    def answer(client: QueueClient, consumer: str) -> list[Msg]:
        found = [client.message(consumer, t) for t in task_ids]
        return found + expired(client, consumer) if end else found

    return answer


def expired(client: QueueClient, _: str) -> list[Msg]:
    headers = {"Status": "408", "Description": "Request Timeout"}
    return [Msg(_client=client, subject="_INBOX", reply="", data=b"", headers=headers)]  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def listening(
    settings: Settings, client: QueueClient
) -> AsyncIterator[tuple[JetStreamTransport, AsyncGenerator[AckableMessage, None]]]:
    """The shared broker's listener over the scripted ``client`` (fakeredis for the results)."""
    shared_broker.configure(settings)
    # Admission asks the result store for a cancel flag: fakeredis, not a Redis server.
    shared_broker.result_backend = memory_backend(settings)
    transport = shared_broker.transport
    assert isinstance(transport, JetStreamTransport)
    transport.connection.client = client  # type: ignore[assignment]
    transport.listener.reset()
    await transport.listener.start()
    listener = shared_broker.listen()
    try:
        yield transport, listener
    finally:
        await listener.aclose()
        transport.inflight.stop()
        transport.inflight.clear()


async def test_a_queue_with_every_slot_taken_does_not_stop_the_others() -> None:
    settings = load_settings(
        nats_stream=STREAM,
        nats_consumer=CONSUMER,
        worker_queues="default,cpu",
        worker_concurrency=2,
        worker_fetch_batch=4,
        ack_wait_seconds=30,
    )
    cpu = f"{CONSUMER}_cpu"
    client = QueueClient(
        {
            cpu: [messages("cpu-1", "cpu-2"), messages("cpu-3")],
            CONSUMER: [expired, messages("default-1", end=True), messages("default-2")],
        }
    )
    async with listening(settings, client) as (transport, listener):

        async def take() -> AckableMessage:
            delivery: AckableMessage = await asyncio.wait_for(anext(listener), 10)
            return delivery

        taken = {json.loads((await take()).data)["task_id"]: None for _ in range(3)}
        assert set(taken) == {"cpu-1", "cpu-2", "default-1"}
        # Both cpu slots are held (the tasks run): no more cpu pulls, the default queue goes on.
        second = json.loads((await take()).data)["task_id"]
        assert second == "default-2"
        assert client.pulls_of(cpu) == [2]
        assert len(client.pulls_of(CONSUMER)) >= 3
        assert transport.inflight.count("cpu") == 2


async def test_a_released_slot_asks_its_queue_for_more() -> None:
    settings = load_settings(
        nats_stream=STREAM,
        nats_consumer=CONSUMER,
        worker_queues="cpu",
        worker_concurrency=2,
        worker_fetch_batch=4,
        ack_wait_seconds=30,
    )
    cpu = f"{CONSUMER}_cpu"
    client = QueueClient({cpu: [messages("cpu-1", "cpu-2"), messages("cpu-3")]})
    async with listening(settings, client) as (_, listener):
        first = await asyncio.wait_for(anext(listener), 10)
        await asyncio.wait_for(anext(listener), 10)
        waiting = asyncio.ensure_future(anext(listener))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # both slots held: nothing asked for
        assert client.pulls_of(cpu) == [2]
        result = first.ack()
        if asyncio.iscoroutine(result):
            await result
        third = await asyncio.wait_for(waiting, 10)
        assert json.loads(third.data)["task_id"] == "cpu-3"
        assert client.pulls_of(cpu) == [2, 1]  # one slot free: a pull for one
