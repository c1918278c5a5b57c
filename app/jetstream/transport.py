"""The JetStream transport of :class:`app.broker.KiqBroker`: its parts, put together.

One object per broker: the :class:`~.connection.Connection`, the :class:`~.topology.Topology`
with its :class:`~.topology.TopologyWatch`, the :class:`~.consumer.Listener` and the
:class:`~.inflight.InFlight` deliveries. A reconnection re-issues the pull requests and checks the
topology; a task stream that no longer answers a publish (NATS lost its data) is recreated and the
message sent again (same ``Nats-Msg-Id``: a duplicate would be dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator

from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from app.config import Settings
from app.jetstream.connection import Connection
from app.jetstream.consumer import Listener
from app.jetstream.inflight import InFlight
from app.jetstream.topology import Topology, TopologyWatch
from app.retry import describe_error
from app.transport import StoredMessage

logger = logging.getLogger("kiqstack.broker")


class JetStreamTransport:
    """Publishing to, consuming from and watching kiqstack's JetStream streams."""

    def __init__(self, settings: Settings) -> None:
        """Put the parts together (nothing is connected until :meth:`start`).

        :param settings: kiqstack settings.
        """
        self.settings = settings
        self.topology = Topology(settings)
        self.connection = Connection(settings)
        self.watch = TopologyWatch(self.topology, self.connection)
        self.inflight = InFlight(settings.ack_wait_seconds)
        self.listener = Listener(settings, self.connection, self.watch, self.inflight)
        # Pull requests did not survive a disconnection: issue new ones at once. NATS may also
        # have come back without its data: check the streams and the consumers.
        self.connection.on_reconnected += [
            lambda: self.listener.wake_up(reconnected=True),
            self.watch.start_repair,
        ]
        self.watch.on_repaired.append(self.listener.wake_up)

    @property
    def stopping(self) -> bool:
        """Set while the process stops: trouble is then expected (quieter logs, no repairs)."""
        return self.connection.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.connection.stopping = value

    @property
    def is_connected(self) -> bool:
        """Tell whether the NATS connection is up."""
        return self.connection.is_connected

    @property
    def is_listening(self) -> bool:
        """Tell whether a receiver iterates :meth:`deliveries`."""
        return self.listener.is_listening

    async def start(self, *, role: str, worker: bool, stop: asyncio.Event) -> bool:
        """Connect, make sure the streams and the consumers are right, and (worker) consume.

        :param role: ``RUN_MODE`` of this process (part of its connection name).
        :param worker: consume, and wait for NATS until ``stop`` (else at most
            ``NATS_CONNECT_TIMEOUT_SECONDS``).
        :param stop: set when the process is asked to stop.
        :return: False when ``stop`` was set before NATS answered.
        :raises NatsUnavailableError: when NATS cannot be reached in time (not in a worker).
        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        settings = self.settings
        self.stopping = False
        self.listener.reset()
        self.watch.reset()
        limit = None if worker else settings.nats_connect_timeout_seconds
        if not await self.connection.connect(name=role, limit=limit, stop=stop):
            return False
        await self.watch.ensure()
        if worker:
            await self.listener.start()
            logger.info(
                "consuming stream %s, queues %s as %s (%d at once per queue, ack wait %ss, "
                "keep-alive every %.1fs)",
                settings.nats_stream,
                ", ".join(self.topology.served_queues),
                ", ".join(c.durable for c in self.listener.consumers),
                settings.worker_concurrency,
                settings.ack_wait_seconds,
                self.inflight.interval,
            )
        return True

    async def ensure_queue(self, queue: str) -> None:
        """Make sure the consumer of ``queue`` exists (the first time this process meets it).

        A failure is only logged, and tried again on the next dispatch to that queue: the stream
        stores the message anyway and the consumer, once made, delivers it.
        """
        if not self.topology.add_queue(queue):
            return
        try:
            await self.topology.ensure_queue(self.connection.js, queue)
        except Exception as exc:
            self.topology.queues.remove(queue)
            logger.warning(
                "could not create the consumer of queue %s (%s); its tasks wait in the stream "
                "until it exists",
                queue,
                describe_error(exc),
            )

    async def stop(self) -> None:
        """Stop repairs and the keep-alive, unsubscribe, flush and close the connection."""
        self.stopping = True
        self.watch.cancel()
        await self.listener.stop()
        await self.connection.close()

    def message_limit(self) -> int:
        """Largest message (payload plus headers) this transport sends, in bytes."""
        limit = self.settings.max_payload_bytes
        client = self.connection.client
        if client.is_connected:
            limit = min(limit, client.max_payload)
        return limit

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish a task message and wait for JetStream to store it.

        A task stream that does not answer (NATS lost its data) is recreated, then the message is
        sent again (same ``Nats-Msg-Id``: a duplicate would be dropped).
        """
        try:
            await self.connection.js.publish(subject, payload=payload, headers=headers)
        except NoStreamResponseError:
            self.watch.lost(f"no stream answers on subject {subject}")
            await self.watch.ensure(repairing=True)
            await self.connection.js.publish(subject, payload=payload, headers=headers)

    async def publish_dead_letter(self, payload: bytes, headers: dict[str, str]) -> None:
        """Store a dead letter in the dead-letter stream."""
        await self.connection.js.publish(
            self.settings.nats_dead_letter_subject, payload=payload, headers=headers
        )

    async def purge(self, subject: str) -> int:
        """Remove every message of the task stream on ``subject`` (a schedule definition).

        :return: how many were removed (0: none was there, e.g. a delayed task already fired).
        """
        request = json.dumps({"filter": subject}).encode()
        reply = await self.connection.client.request(
            f"$JS.API.STREAM.PURGE.{self.settings.nats_stream}", request, timeout=5
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            error = answer["error"]
            raise APIError(
                code=error.get("code"),
                err_code=error.get("err_code"),
                description=error.get("description"),
            )
        return int(answer.get("purged", 0))

    async def last_message(self, subject: str) -> StoredMessage | None:
        """Read the last message of the task stream on ``subject`` (None when there is none)."""
        try:
            raw = await self.connection.js.get_last_msg(self.settings.nats_stream, subject)
        except NotFoundError:
            return None
        return StoredMessage(int(raw.seq or 0), raw.data or b"", dict(raw.headers or {}))

    async def subjects(self, wildcard: str) -> list[str]:
        """List the subjects of the task stream matching ``wildcard`` that hold messages."""
        info = await self.connection.js.stream_info(
            self.settings.nats_stream, subjects_filter=wildcard
        )
        return sorted(info.state.subjects or {})

    async def problem(self) -> str | None:
        """Check that NATS is connected and the stream and consumers exist (for ``/readyz``)."""
        return await self.watch.check()

    async def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Read the backlog of each served queue's consumer.

        :return: per queue, (messages not yet delivered, messages delivered and not yet acked).
        :raises ConnectionError: when NATS is not connected (nothing is sent).
        """
        if not self.connection.is_connected:
            # A request on a client that is not connected (yet) would leave a subscription behind.
            raise ConnectionError("not connected to NATS")
        depths = {}
        for queue in self.topology.served_queues:
            info = await self.connection.js.consumer_info(
                self.settings.nats_stream, self.topology.consumer_name(queue)
            )
            depths[queue] = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
        return depths

    def deliveries(self) -> AsyncGenerator[Msg, None]:
        """Yield the deliveries for this worker (see :meth:`Listener.deliveries`)."""
        return self.listener.deliveries()
