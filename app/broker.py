"""The kiqstack broker: a taskiq ``AsyncBroker`` on JetStream, with the stock unsafe defaults fixed.

:class:`KiqBroker` is the facade; each concern lives in a module of its own:

* :mod:`app.jetstream` (the transport): a **work-queue** stream and durable pull consumers shared
  by every worker replica, with a clear startup error when an existing stream has an incompatible
  configuration and lost streams recreated (:mod:`~app.jetstream.topology`); a bounded wait for
  NATS at startup, infinite reconnects with a capped backoff and one log line per attempt, a worker
  waiting for NATS that still stops on SIGTERM (:mod:`~app.jetstream.connection`); kiqstack's own
  pull requests, which always expire and are sized to the worker's free capacity
  (:mod:`~app.jetstream.consumer`); running tasks kept alive with in-progress acks from the moment
  they arrive, so a task longer than ``ack_wait`` is not delivered to a second worker while it runs
  (:mod:`~app.jetstream.inflight`);
* :mod:`app.delivery`: every delivery checked before it runs; ack only after the result is saved;
  a task this worker does not know, or whose result could not be saved, given back for a delayed
  redelivery; after ``MAX_DELIVER`` deliveries, the dead-letter stream;
* this module: the message a dispatch publishes, on the subject of its task's queue
  (:mod:`app.queues`; a message over the size limit, or with an unsafe task id, is refused before
  anything is sent; ``Nats-Msg-Id`` = task id, so a retried publish is de-duplicated by
  JetStream), the broker's lifecycle, its health.

The transport can be replaced (``KiqBroker(settings, transport=...)``): the unit tests run the
same broker over one in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq.decor import AsyncTaskiqDecoratedTask

from app.config import Settings, get_settings
from app.delivery import DeliveryPipeline
from app.errors import InvalidTaskIdError, PayloadTooLargeError
from app.jetstream.connection import StopSignals
from app.jetstream.transport import JetStreamTransport
from app.lifecycle import hooks
from app.lifecycle.definitions import DELAYED, at_headers, definition_subject, due_time, rfc3339
from app.queues import DEFAULT_QUEUE, check_queue, queue_of, unique
from app.results import KiqResultBackend
from app.transport import Transport, TransportFactory
from app.wire import (
    DUPLICATE_WINDOW_SECONDS,
    MSG_ID_HEADER,
    QUEUE_HEADER,
    TASK_ID_PATTERN,
    TASK_NAME_HEADER,
    message_size,
)


class KiqBroker(AsyncBroker):
    """JetStream work-queue broker with Redis results; configured from :class:`Settings`."""

    def __init__(
        self, settings: Settings | None = None, *, transport: TransportFactory | None = None
    ) -> None:
        """Create the broker. Nothing is read or connected until :meth:`startup`.

        :param settings: settings to use; default: :func:`app.config.get_settings` at startup.
        :param transport: makes the transport from the settings (default: JetStream).
        """
        super().__init__()
        self._settings = settings
        self._make_transport: TransportFactory = transport or JetStreamTransport
        self._transport: Transport | None = None
        self._pipeline: DeliveryPipeline | None = None
        self._signals = StopSignals()

    # -- configuration ----------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The settings in force (read from the environment on first use)."""
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    def configure(self, settings: Settings) -> KiqBroker:
        """Use these settings from the next :meth:`startup` on (a new transport and backend).

        :param settings: kiqstack settings.
        :return: the broker itself.
        """
        self._settings = settings
        self._transport = None
        self._pipeline = None
        self.result_backend = KiqResultBackend(settings)
        return self

    @property
    def results(self) -> KiqResultBackend[Any]:
        """The Redis result backend (with kiqstack's extra helpers)."""
        backend = self.result_backend
        if not isinstance(backend, KiqResultBackend):
            backend = self.result_backend = KiqResultBackend(self.settings)
        return backend

    @property
    def transport(self) -> Transport:
        """The transport carrying this broker's messages (made on first use)."""
        if self._transport is None:
            self._transport = self._make_transport(self.settings)
        return self._transport

    @property
    def pipeline(self) -> DeliveryPipeline:
        """What happens to each delivery in a worker (:mod:`app.delivery`)."""
        if self._pipeline is None:
            transport = self.transport
            self._pipeline = DeliveryPipeline(
                self.settings,
                self.formatter,
                self.find_task,
                transport.inflight,
                transport.publish_dead_letter,
            )
            hooks.install(self._pipeline, self)
        return self._pipeline

    @property
    def duplicate_window(self) -> float:
        """Seconds the task stream drops a publish whose ``Nats-Msg-Id`` it already stored."""
        return DUPLICATE_WINDOW_SECONDS

    @property
    def keepalive_interval(self) -> float:
        """Seconds between "still working" signals for a running task (a third of ack_wait)."""
        return self.transport.inflight.interval

    # -- tasks and their queues -------------------------------------------------------------
    def _register_task(self, task_name: str, task: AsyncTaskiqDecoratedTask[Any, Any]) -> None:
        """Register a task, refusing a bad queue name at once (at decoration time).

        :raises InvalidQueueError: when the task's ``queue`` label is not a valid queue name.
        """
        check_queue(queue_of(task.labels))
        super()._register_task(task_name, task)

    def task_queues(self) -> list[str]:
        """List the queues of the registered tasks, ``default`` first."""
        names = (queue_of(task.labels) for task in self.get_all_tasks().values())
        return unique([DEFAULT_QUEUE, *sorted(names)])

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
            self.result_backend = KiqResultBackend(settings)
        transport = self.transport
        self._signals = StopSignals()
        worker = self.is_worker_process
        if worker:
            self._signals.install(on_stop=lambda: setattr(transport, "stopping", True))
            # Probes, middlewares and the result backend first: while the worker waits for NATS
            # it answers /livez and reports "nats disconnected" on /readyz.
            await AsyncBroker.startup(self)
        started = await transport.start(
            role=settings.run_mode.value, worker=worker, stop=self._signals.requested
        )
        if started:
            # Every queue a registered task names gets its consumer now, served or not, so its
            # backlog shows (and can scale a pool up from zero) before anyone serves it.
            for queue in self.task_queues():
                await transport.ensure_queue(queue)
        if started and not worker:
            # Then events, middlewares and the result backend.
            await AsyncBroker.startup(self)

    async def shutdown(self) -> None:
        """Close the NATS connection, then the result backend and middlewares."""
        transport = self.transport
        transport.stopping = True
        await transport.stop()
        self._signals.restore()
        await AsyncBroker.shutdown(self)

    # -- dispatch ---------------------------------------------------------------------------
    def message_limit(self) -> int:
        """Largest message (payload plus headers) this broker will send, in bytes."""
        return self.transport.message_limit()

    def subject_for(self, message: BrokerMessage) -> str:
        """Choose the subject a task message is published on: its queue's.

        :param message: the serialized task.
        :return: ``NATS_SUBJECT`` (queue ``default``) or ``<NATS_SUBJECT>.<queue>``.
        :raises InvalidQueueError: when the message's ``queue`` label is not a valid queue name.
        """
        return self.settings.queue_subject(check_queue(queue_of(message.labels)))

    async def kick(self, message: BrokerMessage) -> None:
        """Publish a task on its queue's subject and wait for JetStream to persist it.

        The queue's consumer is made sure of first (once per process and queue); if that fails
        the message is still stored (the stream takes every queue's subject) and waits for it.

        A ``delay`` (seconds) or ``eta`` label makes it a delayed task: an ``@at`` definition on
        ``NATS_SCHEDULE_SUBJECT.delayed.<task_id>`` that NATS publishes to the task subject when
        it is due (:mod:`app.lifecycle.delayed`); its status reads ``scheduled`` until then.

        :param message: the serialized task.
        :raises PayloadTooLargeError: when the message is over the size limit (nothing is sent).
        :raises InvalidTaskIdError: when the task id could corrupt logs or keys (nothing is sent).
        :raises InvalidQueueError: when its queue label is not a valid name (nothing is sent).
        :raises ScheduleError: on a bad delay or ETA (nothing is sent).
        """
        if not TASK_ID_PATTERN.fullmatch(message.task_id):
            raise InvalidTaskIdError(task_id=message.task_id[:64])
        queue = check_queue(queue_of(message.labels))
        due = due_time(message.labels, self.settings.max_schedule_delay_seconds)
        headers = {key: str(value) for key, value in message.labels.items()}
        headers[TASK_NAME_HEADER] = message.task_name
        headers[QUEUE_HEADER] = queue
        headers[MSG_ID_HEADER] = message.task_id
        target = self.subject_for(message)
        if due is not None:
            headers = at_headers(due, target, f"{message.task_id}:at", headers)
        size = message_size(message.message, headers)
        limit = self.message_limit()
        if size > limit:
            raise PayloadTooLargeError(size=size, limit=limit)
        await self.transport.ensure_queue(queue)
        if due is None:
            backend = self.result_backend
            if isinstance(backend, KiqResultBackend):
                backend.expect(message.task_id)  # a waiter here then skips its first EXISTS
            await self.transport.publish(target, message.message, headers)
            return
        lifecycle = self.results.lifecycle
        await lifecycle.set_state(message.task_id, {"status": "scheduled", "eta": rfc3339(due)})
        subject = definition_subject(self.settings, DELAYED, message.task_id)
        try:
            await self.transport.publish(subject, message.message, headers)
        except BaseException:
            with contextlib.suppress(Exception):
                await lifecycle.clear_state(message.task_id)
            raise

    # -- consumption ------------------------------------------------------------------------
    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Yield deliveries one at a time, each admitted first (:mod:`app.delivery`).

        Deliveries not handed out when the receiver stops are given back at once.
        """
        pipeline = self.pipeline
        async with contextlib.aclosing(self.transport.deliveries()) as deliveries:
            async for msg in deliveries:
                delivery = await pipeline.admit_safely(msg)
                if delivery is not None:
                    yield delivery

    @property
    def is_listening(self) -> bool:
        """Tell whether a receiver takes deliveries from this broker now."""
        return self.transport.is_listening

    # -- health -----------------------------------------------------------------------------
    @property
    def nats_connected(self) -> bool:
        """Tell whether the NATS connection is up."""
        return self.transport.is_connected

    async def jetstream_problem(self) -> str | None:
        """Check that NATS is connected and the stream and consumer exist (for ``/readyz``).

        A missing stream or consumer is recreated in the background; until then this reports it.

        :return: None when all is well, else what is wrong.
        """
        return await self.transport.problem()

    async def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Read the backlog of each queue this process serves (``WORKER_QUEUES``).

        :return: per queue, (messages not yet delivered, messages delivered and not yet acked).
        """
        return await self.transport.queue_depths()
