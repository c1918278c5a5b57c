"""The unit layer's stand-ins: a transport in memory and a result backend on fakeredis.

:class:`MemoryTransport` implements :class:`app.transport.Transport` with lists and a queue: what
is published on the subject of a queue the settings serve (``WORKER_QUEUES``) becomes a delivery
(a real ``nats.aio.msg.Msg`` whose acks, naks and in-progress signals are recorded; the rest stays
in :attr:`MemoryTransport.unserved`, as in its own consumer), dead letters are kept in a list.
Everything above the transport is the real code: :class:`app.broker.KiqBroker`,
:mod:`app.delivery`, :class:`app.results.KiqResultBackend` (over ``fakeredis``), the API. The
real-server layers (tests/api, tests/integration, tests/soak) stay: they check what a stand-in
cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
from nats.aio.msg import Msg
from nats.js.errors import APIError

from app.broker import KiqBroker
from app.config import Settings
from app.jetstream.inflight import InFlight
from app.queues import DEFAULT_QUEUE, queue_consumer
from app.results import KiqResultBackend
from app.tasks.broker import broker as shared_broker
from app.tasks.broker import build_broker
from app.transport import StoredMessage
from app.wire import (
    ERR_WRONG_LAST_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    MSG_ID_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULE_NEXT_PURGE,
    SCHEDULE_TARGET_HEADER,
    SCHEDULER_HEADER,
)

ACK, NAK, PROGRESS = b"", b"-NAK", b"+WPI"


@dataclass
class Published:
    """One message a transport was asked to publish."""

    subject: str
    payload: bytes
    headers: dict[str, str]

    @property
    def body(self) -> dict[str, Any]:
        """The payload as JSON."""
        loaded: dict[str, Any] = json.loads(self.payload)
        return loaded


class RecordingClient:
    """What a ``Msg`` acks through: records every publication on a reply subject."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail: BaseException | None = None

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((subject, payload))

    def answers(self, msg: Msg) -> list[bytes]:
        """What was sent for this delivery, in order (``b""`` is an ack)."""
        return [payload for subject, payload in self.sent if subject == msg.reply]


@dataclass
class MemoryTransport:
    """A :class:`app.transport.Transport` in memory (see the module docstring).

    :attr:`published` holds what was stored: like the task stream, a second message with a
    ``Nats-Msg-Id`` already stored is dropped (counted in :attr:`duplicates`).
    """

    settings: Settings
    connected: bool = True
    #: What :meth:`problem` reports while connected.
    trouble: str | None = None
    #: Raised by :meth:`publish` / :meth:`publish_dead_letter` while set.
    fail_publish: BaseException | None = None
    fail_dead_letter: BaseException | None = None
    published: list[Published] = field(default_factory=list)
    dead_letters: list[Published] = field(default_factory=list)
    client: RecordingClient = field(default_factory=RecordingClient)
    stopping: bool = False
    started: int = 0
    #: ``Nats-Msg-Id`` values stored (duplicates are dropped, as by the task stream) and drops.
    msg_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    #: Queues whose consumer was made sure of (:meth:`ensure_queue`).
    ensured: list[str] = field(default_factory=list)
    #: What was published on a queue no worker of these settings serves, by queue.
    unserved: dict[str, list[Published]] = field(default_factory=dict)
    #: Schedule definitions stored, by subject (a second one on a subject replaces the first).
    definitions: dict[str, StoredMessage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inflight = InFlight(self.settings.ack_wait_seconds)
        self._queue: asyncio.Queue[Msg] | None = None
        self._listening = False
        self._sequence = 0
        self._waiting: Counter[str] = Counter()

    # -- the Transport protocol ---------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.connected

    @property
    def is_listening(self) -> bool:
        return self._listening

    async def start(self, *, role: str, worker: bool, stop: asyncio.Event) -> bool:
        self.started += 1
        self.stopping = False
        if worker:
            self.inflight.start(lambda: self.connected)
        return True

    async def stop(self) -> None:
        self.stopping = True
        self.inflight.stop()

    def message_limit(self) -> int:
        return self.settings.max_payload_bytes

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        if self.fail_publish is not None:
            raise self.fail_publish
        if SCHEDULE_HEADER in headers:  # a definition: stored, fired by fire()
            expected = headers.get(EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER)
            last = self.definitions.get(subject)
            if expected is not None and int(expected) != (last.sequence if last else 0):
                raise APIError(err_code=ERR_WRONG_LAST_SEQUENCE, description="wrong last sequence")
            self._sequence += 1
            self.definitions[subject] = StoredMessage(self._sequence, payload, dict(headers))
            return
        msg_id = headers.get(MSG_ID_HEADER)
        if msg_id is not None:
            if msg_id in self.msg_ids:  # JetStream's duplicate window drops it
                self.duplicates += 1
                return
            self.msg_ids.add(msg_id)
        self.published.append(Published(subject, payload, dict(headers)))
        queue = self.queue_of_subject(subject)
        if queue in self.settings.worker_queues:
            self.deliver(payload, headers, queue=queue)
        else:
            self.unserved.setdefault(queue, []).append(self.published[-1])

    async def publish_dead_letter(self, payload: bytes, headers: dict[str, str]) -> None:
        if self.fail_dead_letter is not None:
            raise self.fail_dead_letter
        self.dead_letters.append(
            Published(self.settings.nats_dead_letter_subject, payload, dict(headers))
        )

    async def purge(self, subject: str) -> int:
        return 1 if self.definitions.pop(subject, None) is not None else 0

    async def last_message(self, subject: str) -> StoredMessage | None:
        return self.definitions.get(subject)

    async def subjects(self, wildcard: str) -> list[str]:
        prefix = wildcard.removesuffix(">")
        return sorted(s for s in self.definitions if s.startswith(prefix))

    async def problem(self) -> str | None:
        return self.trouble if self.connected else "disconnected"

    async def ensure_queue(self, queue: str) -> None:
        if queue not in self.ensured:
            self.ensured.append(queue)

    async def queue_depths(self) -> dict[str, tuple[int, int]]:
        return {q: (self._waiting[q], self.inflight.count(q)) for q in self.settings.worker_queues}

    async def deliveries(self) -> AsyncGenerator[Msg, None]:
        self._listening = True
        try:
            while True:
                msg = await self.queue.get()
                queue = self.queue_of_subject(msg.subject)
                self._waiting[queue] -= 1
                self.inflight.hold(msg, queue)
                yield msg
        finally:
            self._listening = False
            while not self.queue.empty():
                msg = self.queue.get_nowait()
                with contextlib.suppress(Exception):
                    await msg.nak()

    # -- for tests ----------------------------------------------------------------------------
    def queue_of_subject(self, subject: str) -> str:
        """The queue whose subject this is."""
        base = self.settings.nats_subject
        return subject.removeprefix(f"{base}.") if subject != base else DEFAULT_QUEUE

    def fire(self, subject: str, next_tick: str = SCHEDULE_NEXT_PURGE) -> Msg:
        """Do what the server does when a definition is due: publish its copy to the target.

        An ``@at`` definition (``next_tick`` ``purge``) is removed; a periodic one stays.
        """
        stored = self.definitions[subject]
        if next_tick == SCHEDULE_NEXT_PURGE:
            del self.definitions[subject]
        headers = {k: v for k, v in stored.headers.items() if not k.startswith("Nats-")}
        headers.update({SCHEDULER_HEADER: subject, SCHEDULE_NEXT_HEADER: next_tick})
        target = stored.headers[SCHEDULE_TARGET_HEADER]
        self.published.append(Published(target, stored.data, dict(headers)))
        return self.deliver(stored.data, headers, subject=target)

    @property
    def queue(self) -> asyncio.Queue[Msg]:
        """Deliveries waiting for a receiver (made in the running event loop)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    def delivery(
        self,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        delivered: int = 1,
        timestamp_ns: int = 1_700_000_000_000_000_000,
        queue: str = DEFAULT_QUEUE,
        subject: str | None = None,
    ) -> Msg:
        """A JetStream delivery of ``payload`` (not queued), acked through :attr:`client`.

        On ``queue``'s subject, or on ``subject`` (then of the queue that subject belongs to).
        """
        self._sequence += 1
        s, seq = self.settings, self._sequence
        if subject is None:
            subject = s.queue_subject(queue)
        else:
            queue = self.queue_of_subject(subject)
        where = f"{s.nats_stream}.{queue_consumer(s.nats_consumer, queue)}"
        reply = f"$JS.ACK.{where}.{delivered}.{seq}.{seq}.{timestamp_ns}.0"
        return Msg(
            _client=self.client,  # type: ignore[arg-type]
            subject=subject,
            reply=reply,
            data=payload,
            headers=dict(headers) if headers else None,
        )

    def deliver(self, payload: bytes, headers: dict[str, str] | None = None, **kw: Any) -> Msg:
        """Queue a delivery of ``payload`` for the receiver; return it."""
        msg = self.delivery(payload, headers, **kw)
        self._waiting[self.queue_of_subject(msg.subject)] += 1
        self.queue.put_nowait(msg)
        return msg


def memory_backend(settings: Settings, server: Any = None) -> KiqResultBackend[Any]:
    """The real result backend over a fakeredis server (a fresh one by default)."""
    redis = fakeredis.FakeAsyncRedis(server=server or fakeredis.FakeServer())
    return KiqResultBackend(settings, redis=redis)


def memory_broker(
    settings: Settings, *, tasks: Iterable[str] | None = None, server: Any = None
) -> tuple[KiqBroker, MemoryTransport]:
    """A broker built by :func:`build_broker`, over a :class:`MemoryTransport` and fakeredis.

    :param tasks: names of tasks of the shared broker (after importing ``TASK_MODULES``) to
        register on it too (default: all of them).
    :return: the broker and its transport.
    """
    for module in settings.task_modules:
        importlib.import_module(module)
    transports: list[MemoryTransport] = []

    def make(settings: Settings) -> MemoryTransport:
        transports.append(MemoryTransport(settings))
        return transports[-1]

    broker = build_broker(settings, transport=make, result_backend=memory_backend(settings, server))
    shared = shared_broker.get_all_tasks()
    for name in shared if tasks is None else tasks:
        task = shared[name]
        if broker.find_task(name) is None:
            broker.register_task(task.original_func, task_name=name, **task.labels)
    transport = broker.transport
    assert isinstance(transport, MemoryTransport)
    return broker, transport
