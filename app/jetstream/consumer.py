"""Taking tasks from the durable pull consumers: kiqstack's own pull requests, on its own inbox.

Every pull request expires (``FETCH_TIMEOUT_SECONDS``), so one lost in a NATS restart is simply
issued again, and SIGTERM is acted on within that time. What arrives on the inbox is held (and
kept alive, :mod:`.inflight`) at once, before the receiver asks for it: a delivery never sits
unseen in a client buffer while its ack wait runs out. Deliveries not handed out when the receiver
stops are given back at once.

A worker serving several queues (``WORKER_QUEUES``) pulls from each queue's consumer on its own,
with ``WORKER_CONCURRENCY`` slots per queue: a request asks for no more messages than the queue
has free slots, and a queue whose slots are all taken asks for nothing until one is released. So a
full ``cpu`` queue never holds up a ``default`` task: the receiver runs up to
``WORKER_CONCURRENCY`` tasks of each queue at once (:attr:`app.config.Settings.worker_slots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from nats.aio.msg import Msg

from app.config import Settings
from app.jetstream.connection import Connection
from app.jetstream.inflight import InFlight
from app.jetstream.topology import TopologyWatch
from app.retry import Backoff, describe_error
from app.wire import (
    DESCRIPTION_HEADER,
    STATUS_END_OF_PULL,
    STATUS_HEADER,
    STATUS_HEARTBEAT,
    STATUS_NO_RESPONDERS,
    pull_subject,
)

logger = logging.getLogger("kiqstack.broker")

#: Seconds one pull request may wait on the server. Bounded, so that a pull request lost in a NATS
#: restart is re-issued, and so that SIGTERM is acted on within this time.
FETCH_TIMEOUT_SECONDS = 2.0
#: How long after its expiry a pull request that never reported its end is given up.
PULL_GRACE_SECONDS = 1.0


class PullConsumer:
    """One durable pull consumer: its inbox, its open pull request and its error backoff."""

    def __init__(self, stream: str, durable: str, queue: str) -> None:
        """Describe the consumer (nothing is subscribed until :meth:`Listener.start`).

        :param stream: the stream's name.
        :param durable: the consumer's name.
        :param queue: the queue it serves.
        """
        self.stream = stream
        self.durable = durable
        self.queue = queue
        self.subject = pull_subject(stream, durable)
        self.inbox = ""
        self.subscription: Any = None
        #: Messages the open pull request may still bring, and the loop time it ends.
        self.left = 0
        self.deadline = 0.0
        #: No pull request before this loop time (backing off after an error).
        self.not_before = 0.0
        self.backoff = Backoff()

    def is_open(self, now: float) -> bool:
        """Tell whether a pull request is still open (may still bring messages)."""
        return self.left > 0 and now < self.deadline


class Listener:
    """Pull requests to the consumers, and the deliveries they bring, one at a time."""

    def __init__(
        self,
        settings: Settings,
        connection: Connection,
        watch: TopologyWatch,
        inflight: InFlight,
    ) -> None:
        """Create the listener (not started).

        :param settings: kiqstack settings (concurrency, fetch batch).
        :param connection: the NATS connection.
        :param watch: told when a consumer does not answer.
        :param inflight: where arriving deliveries are held.
        """
        self.settings = settings
        self.connection = connection
        self.watch = watch
        self.inflight = inflight
        topology = watch.topology
        self.consumers = [
            PullConsumer(topology.stream, topology.consumer_name(queue), queue)
            for queue in topology.served_queues
        ]
        #: True while a receiver iterates :meth:`deliveries`.
        self.is_listening = False
        self.reset()

    def reset(self) -> None:
        """Objects bound to the event loop, made afresh by every startup."""
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        for consumer in self.consumers:
            consumer.left = 0
            consumer.deadline = consumer.not_before = 0.0
            consumer.backoff = Backoff()

    async def start(self) -> None:
        """Subscribe each consumer's inbox and start the keep-alive."""
        client = self.connection.client
        for consumer in self.consumers:
            consumer.inbox = client.new_inbox()
            consumer.subscription = await client.subscribe(
                consumer.inbox, cb=self._callback(consumer)
            )
        self.inflight.on_release = lambda: self._wake.set()  # a slot is free: ask for more
        self.inflight.start(lambda: self.connection.is_connected)

    async def stop(self) -> None:
        """Stop the keep-alive and unsubscribe the inboxes."""
        self.inflight.stop()
        self.inflight.on_release = None
        for consumer in self.consumers:
            if consumer.subscription is not None:
                with contextlib.suppress(Exception):
                    await consumer.subscription.unsubscribe()
                consumer.subscription = None

    def wake_up(self, *, reconnected: bool = False) -> None:
        """Ask for tasks again now (after a repair; after a reconnection every request is lost)."""
        for consumer in self.consumers:
            if reconnected:
                consumer.left = 0
            consumer.not_before = 0.0
        self._wake.set()

    def _callback(self, consumer: PullConsumer) -> Any:
        async def on_message(msg: Msg) -> None:
            await self._on_message(consumer, msg)

        return on_message

    async def _on_message(self, consumer: PullConsumer, msg: Msg) -> None:
        """Take what arrives on an inbox: a delivery (held from now on) or a status."""
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status:
            description = msg.headers.get(DESCRIPTION_HEADER, "") if msg.headers else ""
            self._status(consumer, status, description)
            return
        if not msg.reply:
            return
        consumer.left = max(0, consumer.left - 1)
        if not self.is_listening:
            # Late answer to a pull request of a receiver that stopped: let another worker run it.
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        consumer.backoff.reset()
        self.inflight.hold(msg, consumer.queue)
        self._queue.put_nowait(msg)
        self._wake.set()

    def _status(self, consumer: PullConsumer, status: str, description: str) -> None:
        """Note that a pull request ended (or failed), and back off on errors."""
        if status == STATUS_HEARTBEAT:
            return
        consumer.left = 0
        self._wake.set()
        if status in STATUS_END_OF_PULL:
            consumer.backoff.reset()  # expired or nothing left: a healthy end
            return
        # 503 (no responders: the consumer or stream is gone), 409 (consumer deleted, too many
        # waiting requests, ...): wait before the next pull, and recreate what is missing.
        consumer.not_before = asyncio.get_running_loop().time() + consumer.backoff.next()
        if status == STATUS_NO_RESPONDERS or "deleted" in description.lower():
            self.watch.lost(
                f"consumer {consumer.durable} of stream {consumer.stream} "
                f"does not answer (status {status})"
            )
        else:
            logger.info(
                "pull request ended with status %s %s", status, " ".join(description.split())
            )

    def free_slots(self, consumer: PullConsumer) -> int:
        """How many more tasks of this consumer's queue the worker can start now."""
        return self.settings.worker_concurrency - self.inflight.count(consumer.queue)

    async def _request(self, consumer: PullConsumer, free: int) -> None:
        """Ask a consumer for as many messages as its queue has free slots (at most a batch)."""
        loop = asyncio.get_running_loop()
        batch = max(1, min(self.settings.worker_fetch_batch, free))
        request = {"batch": batch, "expires": int(FETCH_TIMEOUT_SECONDS * 1e9)}
        await self.connection.client.publish(
            consumer.subject, json.dumps(request).encode(), reply=consumer.inbox
        )
        consumer.left = batch
        consumer.deadline = loop.time() + FETCH_TIMEOUT_SECONDS + PULL_GRACE_SECONDS

    async def deliveries(self) -> AsyncGenerator[Msg, None]:
        """Yield deliveries one at a time, asking for no more than the worker can start.

        Deliveries not handed out when the iteration stops are given back at once.
        """
        loop = asyncio.get_running_loop()
        connection = self.connection
        self.is_listening = True
        try:
            while True:
                if not self._queue.empty():
                    yield self._queue.get_nowait()
                    continue
                now = loop.time()
                self._wake.clear()
                waits = []
                requested = False
                for consumer in self.consumers:
                    if consumer.is_open(now):
                        waits.append(consumer.deadline - now)
                        continue
                    if not connection.is_connected or now < consumer.not_before:
                        # Reconnecting (a pull request would only be buffered) or backing off.
                        waits.append(max(consumer.not_before - now, 0.0) or FETCH_TIMEOUT_SECONDS)
                        continue
                    free = self.free_slots(consumer)
                    if free <= 0:
                        # Every slot of this queue is taken: a release wakes this loop up.
                        waits.append(FETCH_TIMEOUT_SECONDS)
                        continue
                    requested = True
                    try:
                        await self._request(consumer, free)
                    except Exception as exc:
                        if connection.is_closed:
                            raise  # for good: taskiq starts a fresh worker process
                        delay = consumer.backoff.next()
                        logger.warning(
                            "could not ask NATS for tasks (%s); next attempt in %.1fs",
                            describe_error(exc),
                            delay,
                        )
                        consumer.not_before = loop.time() + delay
                if requested:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(waits))
        finally:
            self.is_listening = False
            while not self._queue.empty():
                msg = self._queue.get_nowait()
                self.inflight.release(msg)
                with contextlib.suppress(Exception):
                    await msg.nak()
