"""The streams and consumers kiqstack needs, made sure of at startup and repaired when lost.

:class:`Topology` is the one place that says what exists on the NATS server: the work-queue task
stream (its subjects: :func:`task_stream_subjects`), the dead-letter stream, and one durable pull
consumer per queue (:mod:`app.queues`), filtered on exactly its queue's subject, shared by the
workers that serve it. :class:`TopologyWatch` notices when they disappear (NATS restarted without
its data) and recreates them in the background while ``/readyz`` reports the problem.

Upgrades from a release without queues: a task stream that takes fewer subjects than kiqstack
needs (only ``NATS_SUBJECT``) is updated in place, keeping its messages, and the ``default``
consumer (same name as before) gets its filter subject; the tasks it held are consumed as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from app.config import Settings
from app.errors import StreamConfigError
from app.jetstream.connection import Connection
from app.queues import DEFAULT_QUEUE, queue_consumer, unique
from app.retry import Backoff, describe_error
from app.wire import DUPLICATE_WINDOW_SECONDS

logger = logging.getLogger("kiqstack.broker")


def _value(setting: object) -> object:
    return getattr(setting, "value", setting)


def task_subject(settings: Settings, queue: str = DEFAULT_QUEUE) -> str:
    """Name the subject the tasks of a queue go to (what a delayed task or a retry targets).

    :param settings: kiqstack settings.
    :param queue: the queue.
    :return: ``NATS_SUBJECT`` for the default queue, else ``NATS_SUBJECT.<queue>``.
    """
    return settings.queue_subject(queue)


def schedule_subjects(settings: Settings) -> str:
    """Name the wildcard of the schedule definitions' subjects (``NATS_SCHEDULE_SUBJECT.>``)."""
    return f"{settings.nats_schedule_subject}.>"


def task_stream_subjects(settings: Settings) -> list[str]:
    """List the subjects of the task stream (the one place they are named).

    :param settings: kiqstack settings.
    :return: ``NATS_SUBJECT`` (queue ``default``), ``<NATS_SUBJECT>.*`` (every other queue), then
        the schedule definitions' ``NATS_SCHEDULE_SUBJECT.>``.
    """
    return [settings.nats_subject, f"{settings.nats_subject}.*", schedule_subjects(settings)]


class Topology:
    """Configurations of the streams and consumers, from the settings."""

    def __init__(self, settings: Settings) -> None:
        """Describe the topology these settings ask for (nothing is sent to NATS).

        :param settings: kiqstack settings (stream, subject and consumer names, WORKER_QUEUES).
        """
        self.settings = settings
        #: Queues whose consumers this process makes sure of: ``default``, the served ones, and
        #: any added later (:meth:`add_queue`: the queues of the tasks it dispatches).
        self.queues = unique([DEFAULT_QUEUE, *settings.worker_queues])

    @property
    def served_queues(self) -> list[str]:
        """The queues a worker of these settings takes tasks from (``WORKER_QUEUES``)."""
        return list(self.settings.worker_queues)

    def add_queue(self, queue: str) -> bool:
        """Make sure of this queue's consumer too from now on.

        :return: True when the queue was not known yet.
        """
        if queue in self.queues:
            return False
        self.queues.append(queue)
        return True

    @property
    def stream(self) -> str:
        """Name of the task stream."""
        return self.settings.nats_stream

    def task_stream_config(self) -> StreamConfig:
        """Describe the work-queue task stream, which also holds the schedule definitions.

        ``allow_msg_schedules``: delayed tasks, retries and periodic schedules are definitions
        stored on ``NATS_SCHEDULE_SUBJECT.>`` that the server fires itself. No ``max_age`` and no
        message or byte limits: they would delete definitions without a word.
        """
        s = self.settings
        return StreamConfig(
            name=s.nats_stream,
            subjects=task_stream_subjects(s),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=s.nats_stream_replicas,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            allow_msg_schedules=True,
        )

    def dead_letter_stream_config(self) -> StreamConfig:
        """Describe the dead-letter stream (never consumed; ``DEAD_LETTER_MAX_AGE_SECONDS``)."""
        s = self.settings
        return StreamConfig(
            name=s.nats_dead_letter_stream,
            subjects=[s.nats_dead_letter_subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=s.nats_stream_replicas,
            max_age=float(s.dead_letter_max_age_seconds),
        )

    def consumer_name(self, queue: str) -> str:
        """Name the durable consumer of a queue (``NATS_CONSUMER`` for ``default``)."""
        return queue_consumer(self.settings.nats_consumer, queue)

    def worker_consumer_config(self, queue: str = DEFAULT_QUEUE) -> ConsumerConfig:
        """Describe the durable pull consumer of a queue, shared by every worker serving it.

        :param queue: the queue.
        :return: its configuration, filtered on exactly the queue's subject.
        """
        s = self.settings
        return ConsumerConfig(
            durable_name=self.consumer_name(queue),
            filter_subject=s.queue_subject(queue),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.ack_wait_seconds,
            max_deliver=s.consumer_max_deliver,
            max_ack_pending=-1,
            max_waiting=512,
        )

    def consumer_configs(self) -> list[ConsumerConfig]:
        """Describe the consumers of :attr:`queues`, the ``default`` queue's first."""
        return [self.worker_consumer_config(queue) for queue in self.queues]

    def consumer_names(self) -> list[str]:
        """Names of the consumers this process relies on: ``default`` and the served queues'."""
        return [self.consumer_name(q) for q in unique([DEFAULT_QUEUE, *self.served_queues])]

    async def ensure(self, js: JetStreamContext, *, repairing: bool = False) -> None:
        """Create the streams and the consumers if missing (and apply the consumer settings).

        :param js: a connected JetStream context.
        :param repairing: log a created stream as the loss it means (NATS lost its data).
        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        # An older release's consumer takes every subject of the stream: it gets its filter on the
        # default queue's subject before the stream takes the other queues' subjects (it could be
        # handed their tasks) and the schedule subjects (an ack would delete a definition).
        await ensure_stream(
            js,
            self.task_stream_config(),
            work_queue=True,
            repairing=repairing,
            before_update=self._filter_default,
        )
        await ensure_stream(
            js, self.dead_letter_stream_config(), work_queue=False, repairing=repairing
        )
        for config in self.consumer_configs():  # ``default`` first
            await js.add_consumer(stream=self.stream, config=config)

    async def _filter_default(self, js: JetStreamContext) -> None:
        await js.add_consumer(stream=self.stream, config=self.worker_consumer_config())

    async def ensure_queue(self, js: JetStreamContext, queue: str) -> None:
        """Create (or update) the consumer of one queue.

        :param js: a connected JetStream context.
        :param queue: the queue.
        """
        await js.add_consumer(stream=self.stream, config=self.worker_consumer_config(queue))


def stream_problems(have: StreamConfig, wanted: StreamConfig) -> list[str]:
    """Tell what keeps an existing stream from serving as ``wanted`` (retention, subjects).

    A stream that takes *fewer* subjects than wanted is no problem: :func:`ensure_stream` adds the
    missing ones in place. One that takes a subject kiqstack does not want is.

    :param have: the existing stream's configuration.
    :param wanted: the configuration kiqstack needs.
    :return: one sentence per problem (empty when compatible).
    """
    problems = []
    if have.retention != wanted.retention:
        problems.append(
            f"retention is {_value(have.retention)}, kiqstack needs {_value(wanted.retention)}"
        )
    if not set(have.subjects or []) <= set(wanted.subjects or []):
        problems.append(f"subjects are {have.subjects}, kiqstack needs {wanted.subjects}")
    if wanted.allow_msg_schedules:
        # A limit deletes schedule definitions: the schedule stops without a word.
        if have.max_age:
            problems.append(
                f"max_age is {have.max_age}s (it would delete delayed tasks and schedules)"
            )
        for limit in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
            value = getattr(have, limit)
            if value is not None and value > 0:
                problems.append(f"{limit} is {value} (it would delete delayed tasks and schedules)")
    return problems


def needs_update(have: StreamConfig, wanted: StreamConfig) -> bool:
    """Tell whether a compatible existing stream lacks subjects or schedules kiqstack needs."""
    return set(have.subjects or []) != set(wanted.subjects or []) or bool(
        wanted.allow_msg_schedules and not have.allow_msg_schedules
    )


async def ensure_stream(
    js: JetStreamContext,
    wanted: StreamConfig,
    *,
    work_queue: bool,
    repairing: bool = False,
    before_update: Callable[[JetStreamContext], Awaitable[None]] | None = None,
) -> bool:
    """Create a stream, or check that the existing one is compatible and bring it up to date.

    An existing stream of an earlier kiqstack gets the subjects and the message schedules it
    lacks, in place (its messages are kept). Schedules cannot be switched off again.

    :param js: a connected JetStream context.
    :param wanted: the configuration kiqstack needs.
    :param work_queue: the task stream (whose replicas and storage are worth a warning).
    :param repairing: log a created stream as the loss it means.
    :param before_update: called with ``js`` once the stream is known to exist, before it is
        updated (the consumers get their filters first).
    :return: True when the stream was created.
    :raises StreamConfigError: when an existing stream cannot serve kiqstack.
    """
    assert wanted.name is not None  # noqa: S101
    try:
        info = await js.stream_info(wanted.name)
    except NotFoundError:
        await js.add_stream(config=wanted)
        if repairing:
            logger.warning(
                "JetStream stream %s was missing (NATS restarted without its data?); "
                "recreated it: messages it held are lost",
                wanted.name,
            )
        else:
            logger.info("created JetStream stream %s", wanted.name)
        return True
    have = info.config
    problems = stream_problems(have, wanted)
    if problems:
        raise StreamConfigError(
            f"JetStream stream {wanted.name!r} exists with an incompatible configuration: "
            + "; ".join(problems)
            + ". Retention and subjects cannot be changed in place: drain it and delete it "
            "(nats stream rm), or choose another name (NATS_STREAM / NATS_DEAD_LETTER_STREAM)."
        )
    if before_update is not None:
        await before_update(js)
    if needs_update(have, wanted):
        updated = StreamConfig.from_response(have.as_dict())
        updated.subjects = list(wanted.subjects or [])
        updated.allow_msg_schedules = wanted.allow_msg_schedules or have.allow_msg_schedules
        await js.update_stream(config=updated)
        logger.warning(
            "JetStream stream %s updated in place: subjects %s, message schedules %s",
            wanted.name,
            updated.subjects,
            "on" if updated.allow_msg_schedules else "off",
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
    return False


class TopologyWatch:
    """Keeps the topology in place: reports what is missing, recreates it in the background."""

    def __init__(self, topology: Topology, connection: Connection) -> None:
        """Watch ``topology`` on ``connection``.

        :param topology: what must exist.
        :param connection: the NATS connection to check and repair it on.
        """
        self.topology = topology
        self.connection = connection
        #: What is wrong (None: all is well, as far as this process knows).
        self.problem: str | None = None
        #: Called once a repair succeeded (the listener asks for tasks again at once).
        self.on_repaired: list[Callable[[], None]] = []
        self._repair: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def reset(self) -> None:
        """Forget the problem and the event-loop objects (a new startup)."""
        self.problem = None
        self._repair = None
        self._lock = asyncio.Lock()

    def cancel(self) -> None:
        """Stop a repair in progress."""
        if self._repair is not None:
            self._repair.cancel()
        self._repair = None

    async def ensure(self, *, repairing: bool = False) -> None:
        """Create what is missing (:meth:`Topology.ensure`), then clear the problem.

        :param repairing: log a created stream as the loss it means.
        :raises StreamConfigError: when an existing stream cannot serve kiqstack.
        """
        async with self._lock:
            await self.topology.ensure(self.connection.js, repairing=repairing)
            self.problem = None

    def lost(self, problem: str) -> None:
        """Record that a stream or consumer is gone, and start recreating it."""
        if self.problem is None:
            logger.warning("JetStream: %s; recreating the streams and the consumer", problem)
        self.problem = problem
        self.start_repair()

    def start_repair(self) -> None:
        """Start recreating what is missing, unless that already runs (or the process stops)."""
        if self.connection.stopping or (self._repair is not None and not self._repair.done()):
            return
        self._repair = asyncio.get_running_loop().create_task(self._repair_loop())

    async def _repair_loop(self) -> None:
        """Recreate what is missing; retry (one line per failure) until it works."""
        backoff = Backoff()
        connection = self.connection
        while not connection.stopping:
            if connection.is_connected:
                try:
                    await self.ensure(repairing=True)
                except Exception as exc:
                    if self.problem is None:
                        self.problem = f"cannot check the streams: {type(exc).__name__}"
                    delay = backoff.next()
                    logger.log(
                        connection.quiet(),
                        "could not recreate the JetStream streams and consumer (%s); "
                        "next attempt in %.1fs",
                        describe_error(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                for callback in self.on_repaired:
                    callback()
                return
            await asyncio.sleep(backoff.next())

    async def check(self) -> str | None:
        """Check that NATS is connected and the stream and consumers exist (for ``/readyz``).

        A missing stream or consumer is recreated in the background; until then this reports it.

        :return: None when all is well, else what is wrong.
        """
        if not self.connection.is_connected:
            return "disconnected"
        if self.problem is not None:
            self.start_repair()
            return self.problem
        try:
            for consumer in self.topology.consumer_names():
                await asyncio.wait_for(
                    self.connection.js.consumer_info(self.topology.stream, consumer), 2
                )
        except NotFoundError as exc:
            self.lost(f"stream or consumer missing ({exc.description})")
            return self.problem
        except Exception as exc:
            return f"jetstream unavailable: {type(exc).__name__}"
        return None
