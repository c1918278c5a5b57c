"""The kiqstack broker: taskiq-nats' pull-based JetStream broker with its unsafe defaults fixed.

What it adds to ``PullBasedJetStreamBroker`` (each fixes a way the stock one loses, repeats or
drops tasks):

* a **work-queue** stream and one durable pull consumer shared by every worker replica; a clear
  startup error when an existing stream has an incompatible configuration (stock code silently keeps
  the old one); a stream or consumer that disappears (NATS restarted without its data) is noticed
  and recreated;
* a bounded wait for NATS at startup (``NATS_CONNECT_TIMEOUT_SECONDS``, an error naming
  ``NATS_URL``), retries with a capped exponential backoff and one log line per attempt, infinite
  reconnects; a worker waiting for NATS still stops on SIGTERM;
* its own pull requests, which always expire, on an inbox whose deliveries are kept alive from the
  moment they arrive: a delivery can never sit unseen in a client buffer while its ack wait runs out
  (which made another worker run the same task at the same time);
* running tasks kept alive with in-progress acks, so a task longer than ``ack_wait`` is not
  delivered to a second worker while it runs;
* pull requests sized to the worker's free capacity, and deliveries not yet handed out given back
  on shutdown;
* every delivery validated before it runs (body, task id, task name, the labels taskiq interprets);
  what fails goes to the dead-letter stream with its reason;
* ack only after the result is saved; a result that could not be saved, or a task this worker does
  not know (rolling deploy), is given back for a delayed redelivery;
* after ``MAX_DELIVER`` failed deliveries a message goes to a dead-letter stream (with a log line
  and a metric) from which it can be listed and replayed;
* a message over the size limit, or with an unsafe task id, is refused before anything is sent;
  ``Nats-Msg-Id`` = task id so a retried publish is de-duplicated by JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable
from types import FrameType
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NoStreamResponseError, NotFoundError
from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker

from app import metrics
from app.admission import TASK_ID_PATTERN, RejectedDelivery, check_delivery
from app.admission import TASK_NAME_HEADER as TASK_NAME_HEADER  # re-exported (app.deadletter)
from app.config import Settings, get_settings
from app.errors import (
    InvalidTaskIdError,
    NatsUnavailableError,
    PayloadTooLargeError,
    StreamConfigError,
)
from app.results import KiqResultBackend, result_save_failed
from app.retry import Backoff, describe_error, redact_url

logger = logging.getLogger("kiqstack.broker")

DEAD_LETTER_REASON_HEADER = "Kiq-Dead-Letter-Reason"
DEAD_LETTER_DETAIL_HEADER = "Kiq-Dead-Letter-Detail"
DEAD_LETTER_DELIVERIES_HEADER = "Kiq-Deliveries"
DEAD_LETTER_SEQUENCE_HEADER = "Kiq-Stream-Sequence"
DEAD_LETTER_TIME_HEADER = "Kiq-Dead-Lettered-At"
_INTERNAL_HEADERS = frozenset(
    {
        "Nats-Msg-Id",
        DEAD_LETTER_REASON_HEADER,
        DEAD_LETTER_DETAIL_HEADER,
        DEAD_LETTER_DELIVERIES_HEADER,
        DEAD_LETTER_SEQUENCE_HEADER,
        DEAD_LETTER_TIME_HEADER,
    }
)
# Seconds one pull request may wait on the server. Bounded, so that a pull request lost in a NATS
# restart is re-issued, and so that SIGTERM is acted on within this time.
FETCH_TIMEOUT_SECONDS = 2.0
# How long after its expiry a pull request that never reported its end is given up.
_PULL_GRACE_SECONDS = 1.0
_HEADER_OVERHEAD = 64  # NATS/1.0 status line and separators
_STATUS = "Status"
_STATUS_END_OF_PULL = frozenset({"404", "408"})


class KiqBroker(PullBasedJetStreamBroker):
    """JetStream work-queue broker with Redis results; configured from :class:`Settings`."""

    def __init__(self, settings: Settings | None = None) -> None:
        """Create the broker. Nothing is read or connected until :meth:`startup`.

        :param settings: settings to use; default: :func:`app.config.get_settings` at startup.
        """
        super().__init__(servers=[], pull_consume_timeout=FETCH_TIMEOUT_SECONDS)
        self._settings = settings
        # Deliveries this process holds and has not acked or given back, by reply subject, with
        # the loop time of their last sign of life (see _keep_alive). A delivery enters at once
        # when it arrives on the inbox, before the receiver asks for it.
        self._running: dict[str, tuple[Msg, float]] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self.is_listening = False
        self._stopping = False
        self._backoff = Backoff()
        self._last_nats_error: BaseException | None = None
        self._saved_signals: dict[int, Any] = {}
        self._jetstream_problem: str | None = None
        self._repair: asyncio.Task[None] | None = None
        self._inbox_sub: Any = None
        self._reset_loop_state()

    def _reset_loop_state(self) -> None:
        """Objects bound to the event loop, made afresh by every :meth:`startup`."""
        self._stop_requested = asyncio.Event()
        self._wake = asyncio.Event()
        self._deliveries: asyncio.Queue[Msg] = asyncio.Queue()
        self._topology_lock = asyncio.Lock()
        self._pull_left = 0
        self._pull_deadline = 0.0
        self._pull_not_before = 0.0
        self._pull_backoff = Backoff()

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

    @property
    def nats_urls(self) -> str:
        """``NATS_URL`` as it may be shown in logs and errors (passwords replaced)."""
        return ",".join(redact_url(url) for url in self.settings.nats_url)

    # -- lifecycle --------------------------------------------------------------------------
    async def startup(self) -> None:
        """Connect, make sure the streams and the consumer are right, and bind the consumer.

        Outside a worker, the wait for NATS is bounded by ``NATS_CONNECT_TIMEOUT_SECONDS``.
        A worker process runs its startup handlers (its probes) first, then waits for NATS as long
        as it takes, until SIGTERM/SIGINT, which ends the wait at once without an error.

        :raises NatsUnavailableError: when NATS cannot be reached in time (not in a worker).
        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        settings = self.settings
        if not isinstance(self.result_backend, KiqResultBackend):
            self.configure(settings)
        self._reset_loop_state()
        self._stopping = False
        self._jetstream_problem = None
        worker = self.is_worker_process
        if worker:
            self._watch_stop_signals()
            # Probes, middlewares and the result backend first: while the worker waits for NATS
            # it answers /livez and reports "nats disconnected" on /readyz.
            await AsyncBroker.startup(self)
        if not await self._connect():
            return  # a worker asked to stop while it waited for NATS
        await self.ensure_topology()
        if worker:
            await self._start_consuming()
            logger.info(
                "consuming stream %s as %s (ack wait %ss, keep-alive every %.1fs)",
                settings.nats_stream,
                settings.nats_consumer,
                settings.ack_wait_seconds,
                self.keepalive_interval,
            )
        else:
            # Then AsyncBroker.startup: events, middlewares, result backend. taskiq-nats' own
            # startup is skipped: it would keep an incompatible stream silently.
            await AsyncBroker.startup(self)

    async def shutdown(self) -> None:
        """Close the NATS connection, then the result backend and middlewares."""
        self._stopping = True
        for task in (self._keepalive, self._repair):
            if task is not None:
                task.cancel()
        self._keepalive = self._repair = None
        if self._inbox_sub is not None:
            with contextlib.suppress(Exception):
                await self._inbox_sub.unsubscribe()
            self._inbox_sub = None
        if self.client.is_connected:
            with contextlib.suppress(Exception):
                await self.client.flush(timeout=2)  # acks sent last must reach the server
        with contextlib.suppress(Exception):
            await self.client.close()
        self._restore_signals()
        await AsyncBroker.shutdown(self)

    def _watch_stop_signals(self) -> None:
        """Notice SIGTERM/SIGINT (then call the handlers installed before, taskiq's)."""
        if threading.current_thread() is not threading.main_thread() or self._saved_signals:
            return
        loop = asyncio.get_running_loop()
        stop = self._stop_requested

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stopping = True
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(stop.set)
            previous = self._saved_signals.get(signum)
            if callable(previous):
                previous(signum, frame)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved_signals[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._saved_signals.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)
        self._saved_signals.clear()

    async def _connect(self) -> bool:
        """Connect to NATS, retrying with a capped backoff (one log line per attempt).

        :return: False when a worker was asked to stop before NATS answered.
        :raises NatsUnavailableError: when the deadline passes (outside a worker).
        """
        settings = self.settings
        self.client = Client()  # type: ignore[misc]  # a fresh client per startup
        self._backoff.reset()
        self._last_nats_error = None
        connecting = asyncio.ensure_future(
            self.client.connect(
                settings.nats_url,
                name=f"kiqstack-{settings.run_mode.value}-{socket.gethostname()}-{os.getpid()}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0,  # _on_nats_error spaces the attempts out
                allow_reconnect=True,
                connect_timeout=5,
                error_cb=self._on_nats_error,
                disconnected_cb=self._on_nats_disconnected,
                reconnected_cb=self._on_nats_reconnected,
            )
        )
        stop = asyncio.ensure_future(self._stop_requested.wait())
        limit = None if self.is_worker_process else settings.nats_connect_timeout_seconds
        try:
            await asyncio.wait(
                {connecting, stop}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            connecting.cancel()
            raise
        finally:
            stop.cancel()
        if connecting.done() and not connecting.cancelled():
            connecting.result()  # raises what the client raised
            self.js = self.client.jetstream()
            self._backoff.reset()
            logger.info("connected to NATS at %s", self.nats_urls)
            return True
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(Exception):
            await self.client.close()
        if self._stop_requested.is_set():
            logger.info("stop requested while waiting for NATS at %s; not starting", self.nats_urls)
            return False
        problem = describe_error(self._last_nats_error) if self._last_nats_error else "no answer"
        raise NatsUnavailableError(urls=self.nats_urls, seconds=limit, problem=problem)

    def _quiet(self) -> int:
        """Log level of connection trouble: expected while stopping, worth a warning otherwise."""
        return logging.INFO if self._stopping else logging.WARNING

    async def _on_nats_error(self, exc: Exception) -> None:
        """nats-py's error callback: one line, no traceback; the wait between attempts.

        nats-py calls this after every failed attempt to (re)connect, then tries again at once:
        sleeping here is what spaces the attempts out (capped exponential backoff).
        """
        self._last_nats_error = exc
        client = self.client
        if client.is_connected or client.is_closed:
            logger.log(self._quiet(), "NATS: %s", describe_error(exc))
            return
        delay = self._backoff.next()
        logger.log(
            self._quiet(),
            "cannot reach NATS at %s (%s); next attempt in %.1fs",
            self.nats_urls,
            describe_error(exc),
            delay,
        )
        await asyncio.sleep(delay)

    async def _on_nats_disconnected(self) -> None:
        level = logging.DEBUG if self.client.is_closed else self._quiet()  # closed: by shutdown()
        logger.log(level, "lost the connection to NATS at %s", self.nats_urls)

    async def _on_nats_reconnected(self) -> None:
        self._backoff.reset()
        logger.info("reconnected to NATS at %s", self.nats_urls)
        # Pull requests did not survive the disconnection: issue a new one now. NATS may also have
        # come back without its data: check the streams and the consumer.
        self._pull_left = 0
        self._pull_not_before = 0.0
        self._wake.set()
        self._start_repair()

    # -- streams and consumer ---------------------------------------------------------------
    async def ensure_topology(self, *, repairing: bool = False) -> None:
        """Create the streams and the consumer if missing (and apply the consumer settings).

        :param repairing: log a created stream as the loss it means (NATS lost its data).
        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        async with self._topology_lock:
            await self._ensure_stream(
                self.task_stream_config(), work_queue=True, repairing=repairing
            )
            await self._ensure_stream(
                self.dead_letter_stream_config(), work_queue=False, repairing=repairing
            )
            await self.js.add_consumer(
                stream=self.settings.nats_stream, config=self.worker_consumer_config()
            )
            self._jetstream_problem = None

    async def _ensure_stream(
        self, wanted: StreamConfig, *, work_queue: bool, repairing: bool = False
    ) -> None:
        """Create a stream, or check that the existing one is compatible.

        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        assert wanted.name is not None  # noqa: S101
        try:
            info = await self.js.stream_info(wanted.name)
        except NotFoundError:
            await self.js.add_stream(config=wanted)
            if repairing:
                logger.warning(
                    "JetStream stream %s was missing (NATS restarted without its data?); "
                    "recreated it: messages it held are lost",
                    wanted.name,
                )
            else:
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
        if (
            work_queue
            and not repairing
            and (have.num_replicas != wanted.num_replicas or have.storage != wanted.storage)
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

    def _jetstream_lost(self, problem: str) -> None:
        """Record that the stream or consumer is gone, and start recreating it."""
        if self._jetstream_problem is None:
            logger.warning("JetStream: %s; recreating the streams and the consumer", problem)
        self._jetstream_problem = problem
        self._start_repair()

    def _start_repair(self) -> None:
        if self._stopping or (self._repair is not None and not self._repair.done()):
            return
        self._repair = asyncio.get_running_loop().create_task(self._repair_topology())

    async def _repair_topology(self) -> None:
        """Recreate what is missing; retry (one line per failure) until it works."""
        backoff = Backoff()
        while not self._stopping:
            if self.client.is_connected:
                try:
                    await self.ensure_topology(repairing=True)
                except Exception as exc:
                    if self._jetstream_problem is None:
                        self._jetstream_problem = f"cannot check the streams: {type(exc).__name__}"
                    delay = backoff.next()
                    logger.log(
                        self._quiet(),
                        "could not recreate the JetStream streams and consumer (%s); "
                        "next attempt in %.1fs",
                        describe_error(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                self._pull_not_before = 0.0
                self._wake.set()
                return
            await asyncio.sleep(backoff.next())

    async def jetstream_problem(self) -> str | None:
        """Check that NATS is connected and the stream and consumer exist (for ``/readyz``).

        A missing stream or consumer is recreated in the background; until then this reports it.

        :return: None when all is well, else what is wrong.
        """
        if not self.nats_connected:
            return "disconnected"
        if self._jetstream_problem is not None:
            self._start_repair()
            return self._jetstream_problem
        try:
            await asyncio.wait_for(
                self.js.consumer_info(self.settings.nats_stream, self.settings.nats_consumer), 2
            )
        except NotFoundError as exc:
            self._jetstream_lost(f"stream or consumer missing ({exc.description})")
            return self._jetstream_problem
        except Exception as exc:
            return f"jetstream unavailable: {type(exc).__name__}"
        return None

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
        :raises InvalidTaskIdError: when the task id could corrupt logs or keys (nothing is sent).
        """
        if not TASK_ID_PATTERN.fullmatch(message.task_id):
            raise InvalidTaskIdError(task_id=message.task_id[:64])
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
        subject = self.settings.nats_subject
        try:
            await self.js.publish(subject, payload=message.message, headers=headers)
        except NoStreamResponseError:
            # No stream listens on the subject: NATS lost its data. Recreate, then send again
            # (same Nats-Msg-Id: a duplicate would be dropped).
            self._jetstream_lost(f"no stream answers on subject {subject}")
            await self.ensure_topology(repairing=True)
            await self.js.publish(subject, payload=message.message, headers=headers)

    # -- consumption ------------------------------------------------------------------------
    async def _start_consuming(self) -> None:
        """Subscribe the inbox that pull requests are answered on, start the keep-alive."""
        s = self.settings
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.nats_stream}.{s.nats_consumer}"
        self._inbox = self.client.new_inbox()
        self._inbox_sub = await self.client.subscribe(self._inbox, cb=self._on_delivery)
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def _on_delivery(self, msg: Msg) -> None:
        """Take what arrives on the inbox: a delivery (kept alive from now on) or a status."""
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status:
            self._pull_status(status, msg.headers.get("Description", "") if msg.headers else "")
            return
        if not msg.reply:
            return
        self._pull_left = max(0, self._pull_left - 1)
        if not self.is_listening:
            # Late answer to a pull request of a receiver that stopped: let another worker run it.
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        self._pull_backoff.reset()
        self._running[msg.reply] = (msg, asyncio.get_running_loop().time())
        self._deliveries.put_nowait(msg)
        self._wake.set()

    def _pull_status(self, status: str, description: str) -> None:
        """A pull request ended (or failed): note it, and back off on errors."""
        if status == "100":  # heartbeat / flow control
            return
        self._pull_left = 0
        self._wake.set()
        if status in _STATUS_END_OF_PULL:
            self._pull_backoff.reset()  # expired or nothing left: a healthy end
            return
        # 503 (no responders: the consumer or stream is gone), 409 (consumer deleted, too many
        # waiting requests, ...): wait before the next pull, and recreate what is missing.
        self._pull_not_before = asyncio.get_running_loop().time() + self._pull_backoff.next()
        if status == "503" or "deleted" in description.lower():
            self._jetstream_lost(
                f"consumer {self.settings.nats_consumer} of stream {self.settings.nats_stream} "
                f"does not answer (status {status})"
            )
        else:
            logger.info(
                "pull request ended with status %s %s", status, " ".join(description.split())
            )

    async def _request_deliveries(self) -> None:
        """Ask the consumer for as many messages as this worker can start now."""
        loop = asyncio.get_running_loop()
        free = self.settings.worker_concurrency - len(self._running)
        batch = max(1, min(self.settings.worker_fetch_batch, free))
        request = {"batch": batch, "expires": int(FETCH_TIMEOUT_SECONDS * 1e9)}
        await self.client.publish(
            self._pull_subject, json.dumps(request).encode(), reply=self._inbox
        )
        self._pull_left = batch
        self._pull_deadline = loop.time() + FETCH_TIMEOUT_SECONDS + _PULL_GRACE_SECONDS

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Yield deliveries one at a time, asking for no more than the worker can start.

        Deliveries not handed out when the receiver stops are given back at once.
        """
        loop = asyncio.get_running_loop()
        self.is_listening = True
        try:
            while True:
                if not self._deliveries.empty():
                    delivery = await self._admit_safely(self._deliveries.get_nowait())
                    if delivery is not None:
                        yield delivery
                    continue
                now = loop.time()
                open_request = self._pull_left > 0 and now < self._pull_deadline
                self._wake.clear()
                if not open_request:
                    if not self.client.is_connected or now < self._pull_not_before:
                        # Reconnecting (a pull request would only be buffered) or backing off.
                        wait = max(self._pull_not_before - now, 0.0) or FETCH_TIMEOUT_SECONDS
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), wait)
                        continue
                    try:
                        await self._request_deliveries()
                    except Exception as exc:
                        if self.client.is_closed:
                            raise  # for good: taskiq starts a fresh worker process
                        delay = self._pull_backoff.next()
                        logger.warning(
                            "could not ask NATS for tasks (%s); next attempt in %.1fs",
                            describe_error(exc),
                            delay,
                        )
                        self._pull_not_before = loop.time() + delay
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._pull_deadline - now)
        finally:
            self.is_listening = False
            while not self._deliveries.empty():
                msg = self._deliveries.get_nowait()
                self._running.pop(msg.reply, None)
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _admit_safely(self, msg: Msg) -> AckableMessage | None:
        """:meth:`_admit`, with a failure (NATS gone mid-way) costing one log line, not the worker.

        A delivery that could not be decided on stays unacknowledged: JetStream delivers it again
        after ``ACK_WAIT_SECONDS``.
        """
        try:
            return await self._admit(msg)
        except Exception as exc:
            self._running.pop(msg.reply, None)
            logger.warning(
                "could not take a delivery (%s); JetStream delivers it again after "
                "ACK_WAIT_SECONDS",
                describe_error(exc),
            )
            return None

    async def _admit(self, msg: Msg) -> AckableMessage | None:
        """Decide what to do with one delivery: hand it out, give it back or dead-letter it."""
        meta = msg.metadata
        delivered = meta.num_delivered
        try:
            message = check_delivery(
                self.formatter, msg.data, (msg.headers or {}).get(TASK_NAME_HEADER)
            )
        except RejectedDelivery as rejected:
            self._running.pop(msg.reply, None)
            await self.dead_letter(msg, rejected.reason, rejected.detail)
            return None
        task_name = message.task_name
        if delivered > self.settings.max_deliver:
            self._running.pop(msg.reply, None)
            reason = "unknown-task" if self.find_task(task_name) is None else "max-deliver"
            await self.dead_letter(msg, reason)
            return None
        if self.find_task(task_name) is None:
            self._running.pop(msg.reply, None)
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
        return AckableMessage(data=msg.data, ack=self._acker(msg))

    def _acker(self, msg: Msg) -> Callable[[], Any]:
        async def ack() -> None:
            self._running.pop(msg.reply, None)
            try:
                if result_save_failed():
                    logger.error(
                        "result of a task could not be saved; the message is given back and the "
                        "task will run again"
                    )
                    await self.give_back(msg, "result-not-saved")
                else:
                    await msg.ack()
            except Exception as exc:
                logger.warning(
                    "could not acknowledge message %d (%s); JetStream delivers it again after "
                    "ACK_WAIT_SECONDS",
                    msg.metadata.sequence.stream,
                    describe_error(exc),
                )

        return ack

    @property
    def keepalive_interval(self) -> float:
        """Seconds between "still working" signals for a running task (a third of ack_wait)."""
        return max(0.5, self.settings.ack_wait_seconds / 3)

    async def _keep_alive(self) -> None:
        """Tell JetStream that the deliveries this process holds are still being worked on.

        Without this, a task that runs longer than ``ACK_WAIT_SECONDS`` is delivered again while
        it still runs (taskiq-nats#16). With it, ``ACK_WAIT_SECONDS`` is how long a worker may go
        silent, crashed or stuck, before its tasks go to another worker: a task may run longer,
        as long as its worker's event loop keeps turning. Each delivery is signalled once its last
        sign of life is ``keepalive_interval`` old, checked four times per interval, so two signals
        are never more than 5/12 of ``ACK_WAIT_SECONDS`` apart.
        """
        interval = self.keepalive_interval
        tick = interval / 4
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            try:
                await self._signal_progress(loop.time() - interval)
            except Exception as exc:  # never let the keep-alive die
                logger.warning("keep-alive round failed: %s", describe_error(exc))

    async def _signal_progress(self, older_than: float) -> None:
        if not self.client.is_connected:
            return  # signals would only be buffered; the first round after reconnecting sends
        now = asyncio.get_running_loop().time()
        for reply, (msg, since) in list(self._running.items()):
            if since > older_than:
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

    async def dead_letter(self, msg: Msg, reason: str, detail: str = "") -> None:
        """Move a delivery to the dead-letter stream; acknowledge it only once it is stored there.

        If the dead-letter stream cannot take it, the message stays in the task stream and is
        delivered again later: it is never dropped.

        :param msg: the delivery.
        :param reason: a short reason (also a metric label).
        :param detail: what exactly was wrong, for people (kept in a header).
        """
        meta = msg.metadata
        headers = {k: v for k, v in (msg.headers or {}).items() if k not in _INTERNAL_HEADERS}
        headers[DEAD_LETTER_REASON_HEADER] = reason
        if detail:
            headers[DEAD_LETTER_DETAIL_HEADER] = " ".join(detail.split())[:512]
        headers[DEAD_LETTER_DELIVERIES_HEADER] = str(meta.num_delivered)
        headers[DEAD_LETTER_SEQUENCE_HEADER] = str(meta.sequence.stream)
        headers[DEAD_LETTER_TIME_HEADER] = f"{time.time():.3f}"
        try:
            await self.js.publish(
                self.settings.nats_dead_letter_subject, payload=msg.data, headers=headers
            )
        except Exception as exc:
            logger.error(
                "could not dead-letter message %d (%s); it stays queued",
                meta.sequence.stream,
                describe_error(exc),
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.redelivery_delay(meta.num_delivered))
            return
        await msg.ack()
        metrics.DEAD_LETTERED.labels(reason).inc()
        logger.error(
            "dead-lettered message %d (task %r, %d deliveries, reason %s%s) to stream %s",
            meta.sequence.stream,
            headers.get(TASK_NAME_HEADER, "?"),
            meta.num_delivered,
            reason,
            f": {headers[DEAD_LETTER_DETAIL_HEADER]}" if detail else "",
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
