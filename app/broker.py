"""The kiqstack broker: taskiq-nats' pull-based JetStream broker with its unsafe defaults fixed.

What it adds to ``PullBasedJetStreamBroker`` (see ``../shared/notes/taskiq.md`` for why):

* a **work-queue** stream and one durable pull consumer shared by every worker replica; a clear
  startup error when an existing stream has an incompatible configuration (stock code silently keeps
  the old one);
* fetches that always expire (``pull_consume_timeout``), so a worker survives a NATS restart, and
  infinite reconnects;
* running tasks kept alive with in-progress acks, so a task longer than ``ack_wait`` is not
  delivered to a second worker while it runs;
* fetches sized to the worker's free capacity, and prefetched messages handed back on shutdown;
* ack only after the result is saved; a result that could not be saved, or a task this worker does
  not know (rolling deploy), is given back for a delayed redelivery;
* after ``MAX_DELIVER`` failed deliveries a message goes to a dead-letter stream (with a log line
  and a metric) from which it can be listed and replayed;
* a message over the size limit is refused before anything is sent; ``Nats-Msg-Id`` = task id so a
  retried publish is de-duplicated by JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError
from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker

from app import metrics
from app.config import Settings, get_settings
from app.errors import PayloadTooLargeError, StreamConfigError
from app.results import KiqResultBackend, result_save_failed

logger = logging.getLogger("kiqstack.broker")

TASK_NAME_HEADER = "Kiq-Task-Name"
DEAD_LETTER_REASON_HEADER = "Kiq-Dead-Letter-Reason"
DEAD_LETTER_DELIVERIES_HEADER = "Kiq-Deliveries"
DEAD_LETTER_SEQUENCE_HEADER = "Kiq-Stream-Sequence"
DEAD_LETTER_TIME_HEADER = "Kiq-Dead-Lettered-At"
_INTERNAL_HEADERS = frozenset(
    {
        "Nats-Msg-Id",
        DEAD_LETTER_REASON_HEADER,
        DEAD_LETTER_DELIVERIES_HEADER,
        DEAD_LETTER_SEQUENCE_HEADER,
        DEAD_LETTER_TIME_HEADER,
    }
)
# Seconds one fetch request may wait on the server. Bounded, so that a pull request lost in a NATS
# restart is re-issued, and so that SIGTERM is acted on within this time.
FETCH_TIMEOUT_SECONDS = 2.0
_HEADER_OVERHEAD = 64  # NATS/1.0 status line and separators


class KiqBroker(PullBasedJetStreamBroker):
    """JetStream work-queue broker with Redis results; configured from :class:`Settings`."""

    def __init__(self, settings: Settings | None = None) -> None:
        """Create the broker. Nothing is read or connected until :meth:`startup`.

        :param settings: settings to use; default: :func:`app.config.get_settings` at startup.
        """
        super().__init__(servers=[], pull_consume_timeout=FETCH_TIMEOUT_SECONDS)
        self._settings = settings
        # Messages handed to the receiver and not yet acked or given back, by reply subject, with
        # the loop time of their last sign of life (see _keep_alive).
        self._running: dict[str, tuple[Msg, float]] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self.is_listening = False

    # -- configuration ----------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The settings in force (read from the environment on first use)."""
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    def configure(self, settings: Settings) -> KiqBroker:
        """Use these settings from the next :meth:`startup` on.

        :param settings: kiqstack settings.
        :return: the broker itself.
        """
        self._settings = settings
        self.result_backend = KiqResultBackend(settings)
        return self

    @property
    def results(self) -> KiqResultBackend[Any]:
        """The Redis result backend (with kiqstack's extra helpers)."""
        backend = self.result_backend
        if not isinstance(backend, KiqResultBackend):
            self.configure(self.settings)
            backend = self.result_backend
        assert isinstance(backend, KiqResultBackend)  # noqa: S101 - narrowing for mypy
        return backend

    def task_stream_config(self) -> StreamConfig:
        """The task stream kiqstack requires."""
        s = self.settings
        return StreamConfig(
            name=s.nats_stream,
            subjects=[s.nats_subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=s.nats_stream_replicas,
            duplicate_window=120,
        )

    def dead_letter_stream_config(self) -> StreamConfig:
        """The dead-letter stream: kept for ``DEAD_LETTER_MAX_AGE_SECONDS``, never consumed."""
        s = self.settings
        return StreamConfig(
            name=s.nats_dead_letter_stream,
            subjects=[s.nats_dead_letter_subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=s.nats_stream_replicas,
            max_age=float(s.dead_letter_max_age_seconds),
        )

    def worker_consumer_config(self) -> ConsumerConfig:
        """The durable pull consumer every worker shares."""
        s = self.settings
        return ConsumerConfig(
            durable_name=s.nats_consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.ack_wait_seconds,
            max_deliver=s.consumer_max_deliver,
            max_ack_pending=-1,
            max_waiting=512,
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def startup(self) -> None:
        """Connect, make sure the streams and the consumer are right, and bind the consumer."""
        settings = self.settings
        if not isinstance(self.result_backend, KiqResultBackend):
            self.configure(settings)
        self.client = Client()  # type: ignore[misc]  # a fresh client per startup
        await self.client.connect(
            settings.nats_url,
            name=f"kiqstack-{settings.run_mode.value}-{socket.gethostname()}-{os.getpid()}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            allow_reconnect=True,
            connect_timeout=5,
        )
        self.js = self.client.jetstream()
        await self._ensure_stream(self.task_stream_config(), work_queue=True)
        await self._ensure_stream(self.dead_letter_stream_config(), work_queue=False)
        await self.js.add_consumer(
            stream=settings.nats_stream, config=self.worker_consumer_config()
        )
        if self.is_worker_process:
            self.consumer = await self.js.pull_subscribe_bind(
                durable=settings.nats_consumer, stream=settings.nats_stream
            )
            self._keepalive = asyncio.create_task(self._keep_alive())
        # Then AsyncBroker.startup: events, middlewares, result backend. taskiq-nats' own
        # startup is skipped: it would keep an incompatible stream silently.
        await AsyncBroker.startup(self)

    async def shutdown(self) -> None:
        """Close the NATS connection, then the result backend and middlewares."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        with contextlib.suppress(Exception):
            await self.client.close()
        await AsyncBroker.shutdown(self)

    async def _ensure_stream(self, wanted: StreamConfig, *, work_queue: bool) -> None:
        """Create a stream, or check that the existing one is compatible.

        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        assert wanted.name is not None  # noqa: S101
        try:
            info = await self.js.stream_info(wanted.name)
        except NotFoundError:
            await self.js.add_stream(config=wanted)
            logger.info("created JetStream stream %s", wanted.name)
            return
        have = info.config
        problems = []
        if have.retention != wanted.retention:
            problems.append(
                f"retention is {getattr(have.retention, 'value', have.retention)}, "
                f"kiqstack needs {getattr(wanted.retention, 'value', wanted.retention)}"
            )
        if set(have.subjects or []) != set(wanted.subjects or []):
            problems.append(f"subjects are {have.subjects}, kiqstack needs {wanted.subjects}")
        if problems:
            raise StreamConfigError(
                f"JetStream stream {wanted.name!r} exists with an incompatible configuration: "
                + "; ".join(problems)
                + ". Retention and subjects cannot be changed in place: drain it and delete it "
                "(nats stream rm), or choose another name (NATS_STREAM / NATS_DEAD_LETTER_STREAM)."
            )
        if work_queue and (
            have.num_replicas != wanted.num_replicas or have.storage != wanted.storage
        ):
            logger.warning(
                "stream %s has replicas=%s storage=%s, settings ask for replicas=%s storage=%s; "
                "keeping the existing stream",
                wanted.name,
                have.num_replicas,
                have.storage,
                wanted.num_replicas,
                wanted.storage,
            )

    # -- dispatch ---------------------------------------------------------------------------
    def message_limit(self) -> int:
        """Largest message (payload plus headers) this broker will send, in bytes."""
        limit = self.settings.max_payload_bytes
        if self.client.is_connected:
            limit = min(limit, self.client.max_payload)
        return limit

    async def kick(self, message: BrokerMessage) -> None:
        """Publish a task and wait for JetStream to persist it.

        :param message: the serialized task.
        :raises PayloadTooLargeError: when the message is over the size limit (nothing is sent).
        """
        headers = {key: str(value) for key, value in message.labels.items()}
        headers[TASK_NAME_HEADER] = message.task_name
        headers["Nats-Msg-Id"] = message.task_id
        size = (
            len(message.message)
            + sum(len(k) + len(v) + 4 for k, v in headers.items())
            + _HEADER_OVERHEAD
        )
        limit = self.message_limit()
        if size > limit:
            raise PayloadTooLargeError(size=size, limit=limit)
        await self.js.publish(self.settings.nats_subject, payload=message.message, headers=headers)

    # -- consumption ------------------------------------------------------------------------
    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Yield deliveries one at a time, fetching no more than the worker can start.

        Messages fetched but not handed out when the receiver stops are given back at once.
        """
        held: deque[Msg] = deque()
        concurrency = self.settings.worker_concurrency
        max_batch = self.settings.worker_fetch_batch
        self.is_listening = True
        try:
            while True:
                if not held:
                    free = concurrency - len(self._running)
                    batch = max(1, min(max_batch, free))
                    try:
                        held.extend(
                            await self.consumer.fetch(batch=batch, timeout=FETCH_TIMEOUT_SECONDS)
                        )
                    except NatsTimeoutError:
                        continue
                    except Exception:
                        if self.client.is_closed:
                            raise
                        logger.warning("fetch failed; retrying", exc_info=True)
                        await asyncio.sleep(1)
                        continue
                    if not held:  # a fetch can end with no message and no timeout error
                        continue
                delivery = await self._admit(held.popleft())
                if delivery is not None:
                    yield delivery
        finally:
            self.is_listening = False
            while held:
                with contextlib.suppress(Exception):
                    await held.popleft().nak()

    async def _admit(self, msg: Msg) -> AckableMessage | None:
        """Decide what to do with one delivery: hand it out, give it back or dead-letter it."""
        meta = msg.metadata
        delivered = meta.num_delivered
        task_name = (msg.headers or {}).get(TASK_NAME_HEADER)
        if task_name is None:
            try:
                task_name = self.formatter.loads(msg.data).task_name
            except Exception:
                await self.dead_letter(msg, "unparseable")
                return None
        if delivered > self.settings.max_deliver:
            reason = "unknown-task" if self.find_task(task_name) is None else "max-deliver"
            await self.dead_letter(msg, reason)
            return None
        if self.find_task(task_name) is None:
            logger.warning(
                "task %r is not registered in this worker (delivery %d of %d); giving it back "
                "so that a worker that knows it can run it",
                task_name,
                delivered,
                self.settings.max_deliver,
            )
            await self.give_back(msg, "unknown-task")
            return None
        if delivered > 1:
            metrics.REDELIVERIES.labels(task_name).inc()
        else:
            waited = time.time() - meta.timestamp.timestamp()
            metrics.QUEUE_WAIT.labels(task_name).observe(max(waited, 0.0))
        self._running[msg.reply] = (msg, asyncio.get_running_loop().time())
        return AckableMessage(data=msg.data, ack=self._acker(msg))

    def _acker(self, msg: Msg) -> Any:
        async def ack() -> None:
            self._running.pop(msg.reply, None)
            if result_save_failed():
                logger.error(
                    "result of a task could not be saved; the message is given back and the "
                    "task will run again"
                )
                await self.give_back(msg, "result-not-saved")
            else:
                await msg.ack()

        return ack

    @property
    def keepalive_interval(self) -> float:
        """Seconds between "still working" signals for a running task (a third of ack_wait)."""
        return max(0.5, self.settings.ack_wait_seconds / 3)

    async def _keep_alive(self) -> None:
        """Tell JetStream that running tasks are still being worked on.

        Without this, a task that runs longer than ``ACK_WAIT_SECONDS`` is delivered again while
        it still runs (taskiq-nats#16). With it, ``ACK_WAIT_SECONDS`` is how long a worker may go
        silent, crashed or stuck, before its tasks go to another worker: a task may run longer,
        as long as its worker's event loop keeps turning.
        """
        interval = self.keepalive_interval
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for reply, (msg, since) in list(self._running.items()):
                if now - since < interval:
                    continue
                try:
                    await msg.in_progress()
                except Exception as exc:
                    logger.debug("in-progress signal failed: %s", exc)
                    continue
                if reply in self._running:
                    self._running[reply] = (msg, now)

    def redelivery_delay(self, delivered: int) -> float:
        """Delay before delivery number ``delivered + 1`` of a message given back."""
        base = self.settings.redelivery_delay_seconds
        return float(min(self.settings.ack_wait_seconds, base * 2 ** (delivered - 1)))

    async def give_back(self, msg: Msg, reason: str) -> None:
        """Negatively acknowledge a delivery so that it comes back after a delay."""
        metrics.GIVEN_BACK.labels(reason).inc()
        delivered = msg.metadata.num_delivered
        if delivered >= self.settings.max_deliver:
            # The next delivery would be over the limit: dead-letter now rather than wait.
            await self.dead_letter(msg, reason)
            return
        await msg.nak(delay=self.redelivery_delay(delivered))

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Move a delivery to the dead-letter stream; acknowledge it only once it is stored there.

        If the dead-letter stream cannot take it, the message stays in the task stream and is
        delivered again later: it is never dropped.
        """
        meta = msg.metadata
        headers = {k: v for k, v in (msg.headers or {}).items() if k not in _INTERNAL_HEADERS}
        headers[DEAD_LETTER_REASON_HEADER] = reason
        headers[DEAD_LETTER_DELIVERIES_HEADER] = str(meta.num_delivered)
        headers[DEAD_LETTER_SEQUENCE_HEADER] = str(meta.sequence.stream)
        headers[DEAD_LETTER_TIME_HEADER] = f"{time.time():.3f}"
        try:
            await self.js.publish(
                self.settings.nats_dead_letter_subject, payload=msg.data, headers=headers
            )
        except Exception:
            logger.exception(
                "could not dead-letter message %d; it stays queued", meta.sequence.stream
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.redelivery_delay(meta.num_delivered))
            return
        await msg.ack()
        metrics.DEAD_LETTERED.labels(reason).inc()
        logger.error(
            "dead-lettered message %d (task %s, %d deliveries, reason %s) to stream %s",
            meta.sequence.stream,
            headers.get(TASK_NAME_HEADER, "?"),
            meta.num_delivered,
            reason,
            self.settings.nats_dead_letter_stream,
        )

    # -- health -----------------------------------------------------------------------------
    @property
    def nats_connected(self) -> bool:
        """Tell whether the NATS connection is up."""
        return bool(self.client.is_connected)

    async def queue_depth(self) -> tuple[int, int]:
        """Read the shared consumer's backlog.

        :return: (messages not yet delivered, messages delivered and not yet acked).
        """
        info = await self.js.consumer_info(self.settings.nats_stream, self.settings.nats_consumer)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
