"""What :class:`app.broker.KiqBroker` needs from the system that carries its messages.

The broker is the same for every process (registry, middlewares, results, admission of deliveries);
the :class:`Transport` moves the bytes. kiqstack's is JetStream
(:class:`app.jetstream.transport.JetStreamTransport`); a transport in memory can stand in for it in
tests (``build_broker(settings, transport=...)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg

from app.config import Settings
from app.jetstream.inflight import InFlight


@dataclass(frozen=True)
class StoredMessage:
    """A message as the task stream stores it."""

    sequence: int
    data: bytes
    headers: dict[str, str]


class Transport(Protocol):
    """Publishing, consuming and health of one broker's messages."""

    #: The deliveries this process holds (kept alive while they run).
    inflight: InFlight
    #: Set while the process stops: trouble is then expected (quieter logs, no repairs).
    stopping: bool

    @property
    def is_connected(self) -> bool:
        """Tell whether the connection is up."""

    @property
    def is_listening(self) -> bool:
        """Tell whether a receiver iterates :meth:`deliveries`."""

    async def start(self, *, role: str, worker: bool, stop: asyncio.Event) -> bool:
        """Connect, make sure of the streams and consumers, and (worker) start consuming.

        :param role: ``RUN_MODE`` of this process (part of its connection name).
        :param worker: a worker process (waits for NATS until ``stop``; consumes).
        :param stop: set when the process is asked to stop.
        :return: False when ``stop`` was set before the connection was up.
        """

    async def stop(self) -> None:
        """Stop consuming and close the connection."""

    def message_limit(self) -> int:
        """Largest message (payload plus headers) that may be published, in bytes."""

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish a task message and wait until it is stored."""

    async def publish_dead_letter(self, payload: bytes, headers: dict[str, str]) -> None:
        """Store a dead letter; raise when it was not stored."""

    async def purge(self, subject: str) -> int:
        """Remove every message of the task stream on ``subject``; return how many."""

    async def last_message(self, subject: str) -> StoredMessage | None:
        """Read the last message of the task stream on ``subject`` (None when there is none)."""

    async def subjects(self, wildcard: str) -> list[str]:
        """List the subjects of the task stream matching ``wildcard`` that hold messages."""

    async def problem(self) -> str | None:
        """Tell what keeps this process from working (None: nothing), for ``/readyz``."""

    async def ensure_queue(self, queue: str) -> None:
        """Make sure the consumer of ``queue`` exists (once per process; failures only logged)."""

    async def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Per queue served: (messages not yet delivered, messages delivered and not yet acked)."""

    def deliveries(self) -> AsyncGenerator[Msg, None]:
        """Yield the deliveries for this worker, one at a time, held from their arrival."""


#: Makes the transport of a broker from its settings.
TransportFactory = Callable[[Settings], Transport]
