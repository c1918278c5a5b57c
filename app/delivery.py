"""What happens to one delivery in a worker: admission, then ack, give back or dead-letter.

The stages, in order:

1. **admission** (:meth:`DeliveryPipeline.admit`): the message is checked
   (:func:`app.admission.check_delivery`); one that fails goes to the dead-letter stream with its
   reason. One delivered more than ``MAX_DELIVER`` times is dead-lettered; one whose task this
   worker does not know (a rolling deploy) is given back for another worker. Then the checks added
   with :meth:`DeliveryPipeline.add_check` run; the first that refuses decides. What passes is
   handed to taskiq's receiver, which runs the task and saves its result.
2. **settling** (the ack taskiq calls once the result is saved): the hooks added with
   :meth:`DeliveryPipeline.add_settler` may settle the delivery themselves; otherwise it is acked,
   or given back when its result could not be saved (:func:`app.results.result_save_failed`).
3. **give back** (:meth:`DeliveryPipeline.give_back`): a delayed negative ack, doubling with each
   delivery; the last allowed delivery is dead-lettered instead.
4. **dead-letter** (:meth:`DeliveryPipeline.dead_letter`): a copy goes to the dead-letter stream
   (headers: :func:`app.wire.dead_letter_headers`); only once it is stored is the delivery acked.

A delivery is held (and kept alive, :mod:`app.jetstream.inflight`) from the moment it arrives until
one of these settles it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from taskiq import AckableMessage, TaskiqMessage
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.decor import AsyncTaskiqDecoratedTask

from app import metrics
from app.admission import RejectedDelivery, check_delivery
from app.config import Settings
from app.jetstream.inflight import InFlight
from app.lifecycle.definitions import periodic_run_body, periodic_task_id
from app.queues import queue_of
from app.results import result_save_failed
from app.retry import describe_error
from app.wire import DEAD_LETTER_DETAIL_HEADER, TASK_NAME_HEADER, dead_letter_headers

logger = logging.getLogger("kiqstack.broker")


class Action(enum.Enum):
    """What to do with a delivery that must not run now."""

    GIVE_BACK = "give back"
    DEAD_LETTER = "dead-letter"
    #: Acknowledge without running: the check settled the task itself (e.g. cancelled).
    DROP = "drop"


@dataclass(frozen=True)
class Refusal:
    """A check's verdict against running a delivery now."""

    action: Action
    #: Short reason (a metric label), e.g. ``unknown-task``.
    reason: str
    #: What exactly is wrong, for people (dead letters keep it in a header).
    detail: str = ""


#: An extra admission check: the delivery and its parsed message; a :class:`Refusal`, or None to
#: let it run.
Check = Callable[[Msg, TaskiqMessage], Awaitable[Refusal | None]]
#: A settling hook: called when taskiq acks a delivery; True when it settled the delivery itself.
Settler = Callable[[Msg], Awaitable[bool]]
#: Sends a dead letter (payload, headers) to the dead-letter stream; raises when it is not stored.
DeadLetterSink = Callable[[bytes, dict[str, str]], Awaitable[None]]


class DeliveryPipeline:
    """Admission, settling, give-back and dead-lettering of the deliveries of one worker."""

    def __init__(
        self,
        settings: Settings,
        formatter: TaskiqFormatter,
        find_task: Callable[[str], AsyncTaskiqDecoratedTask[Any, Any] | None],
        inflight: InFlight,
        sink: DeadLetterSink,
    ) -> None:
        """Create the pipeline.

        :param settings: kiqstack settings (``MAX_DELIVER``, redelivery delay, stream names).
        :param formatter: the broker's formatter (reads a body).
        :param find_task: the broker's task registry.
        :param inflight: the held deliveries (released once settled).
        :param sink: where dead letters go.
        """
        self.settings = settings
        self.formatter = formatter
        self.find_task = find_task
        self.inflight = inflight
        self.sink = sink
        self.checks: list[Check] = []
        self.settlers: list[Settler] = []

    def add_check(self, check: Check) -> None:
        """Run ``check`` on every delivery that passed the built-in checks, in the order added."""
        self.checks.append(check)

    def add_settler(self, settler: Settler) -> None:
        """Offer every delivery taskiq acks to ``settler`` first, in the order added."""
        self.settlers.append(settler)

    # -- admission ----------------------------------------------------------------------------
    async def admit_safely(self, msg: Msg) -> AckableMessage | None:
        """:meth:`admit`, with a failure (NATS gone mid-way) costing one log line, not the worker.

        A delivery that could not be decided on stays unacknowledged: JetStream delivers it again
        after ``ACK_WAIT_SECONDS``.
        """
        try:
            return await self.admit(msg)
        except Exception as exc:
            self.inflight.release(msg)
            logger.warning(
                "could not take a delivery (%s); JetStream delivers it again after "
                "ACK_WAIT_SECONDS",
                describe_error(exc),
            )
            return None

    async def admit(self, msg: Msg) -> AckableMessage | None:
        """Decide what to do with one delivery: hand it out, give it back or dead-letter it.

        :param msg: the delivery.
        :return: the message for taskiq's receiver, or None when it must not run here.
        """
        meta = msg.metadata
        delivered = meta.num_delivered
        if msg.subject.startswith(f"{self.settings.nats_schedule_subject}."):
            # A schedule definition: only a consumer without its filter gets one, and an ack
            # would delete it. Never run or ack it; the next startup re-asserts the filter.
            self.inflight.release(msg)
            logger.error(
                "received schedule definition %s: the worker consumer lost its filter_subject "
                "(an unfiltered add_consumer?); not acknowledging it; restart the workers",
                msg.subject,
            )
            await msg.nak(delay=self.settings.ack_wait_seconds)
            return None
        try:
            message = check_delivery(
                self.formatter, msg.data, (msg.headers or {}).get(TASK_NAME_HEADER)
            )
        except RejectedDelivery as rejected:
            await self.dead_letter(msg, rejected.reason, rejected.detail)
            return None
        data = msg.data
        run_id = periodic_task_id(msg.headers)
        if run_id is not None:
            # A tick of a periodic schedule: every tick is a run of its own (same id when the
            # tick is redelivered).
            data = periodic_run_body(data, run_id, msg.headers or {})
            message.task_id = run_id
        task_name = message.task_name
        if delivered > self.settings.max_deliver:
            reason = "unknown-task" if self.find_task(task_name) is None else "max-deliver"
            await self.dead_letter(msg, reason)
            return None
        if self.find_task(task_name) is None:
            self.inflight.release(msg)
            logger.warning(
                "task %r is not registered in this worker (delivery %d of %d); giving it back "
                "so that a worker that knows it can run it",
                task_name,
                delivered,
                self.settings.max_deliver,
            )
            await self.give_back(msg, "unknown-task")
            return None
        for check in self.checks:
            refusal = await check(msg, message)
            if refusal is None:
                continue
            if refusal.action is Action.DEAD_LETTER:
                await self.dead_letter(msg, refusal.reason, refusal.detail)
            elif refusal.action is Action.DROP:
                self.inflight.release(msg)
                await msg.ack()
            else:
                self.inflight.release(msg)
                await self.give_back(msg, refusal.reason)
            return None
        queue = queue_of(message.labels)
        if delivered > 1:
            metrics.REDELIVERIES.labels(task_name, queue).inc()
        else:
            waited = time.time() - meta.timestamp.timestamp()
            metrics.QUEUE_WAIT.labels(task_name, queue).observe(max(waited, 0.0))
        return AckableMessage(data=data, ack=self._settler_of(msg))

    # -- settling -----------------------------------------------------------------------------
    def _settler_of(self, msg: Msg) -> Callable[[], Any]:
        async def ack() -> None:
            await self.settle(msg)

        return ack

    async def settle(self, msg: Msg) -> None:
        """Settle a delivery taskiq is done with: ack it, or give it back if its result is lost.

        A failure costs a log line: JetStream then delivers the message again after its ack wait.
        """
        self.inflight.release(msg)
        try:
            for settler in self.settlers:
                if await settler(msg):
                    return
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

    def redelivery_delay(self, delivered: int) -> float:
        """Delay before delivery number ``delivered + 1`` of a message given back."""
        base = self.settings.redelivery_delay_seconds
        return float(min(self.settings.ack_wait_seconds, base * 2 ** (delivered - 1)))

    async def give_back(self, msg: Msg, reason: str) -> None:
        """Negatively acknowledge a delivery so that it comes back after a delay.

        :param msg: the delivery.
        :param reason: short reason (a metric label).
        """
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
        self.inflight.release(msg)
        meta = msg.metadata
        headers = dead_letter_headers(
            msg.headers,
            reason=reason,
            detail=detail,
            deliveries=meta.num_delivered,
            sequence=meta.sequence.stream,
            at=time.time(),
        )
        try:
            await self.sink(msg.data, headers)
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
        shown = headers.get(DEAD_LETTER_DETAIL_HEADER)
        logger.error(
            "dead-lettered message %d (task %r, %d deliveries, reason %s%s) to stream %s",
            meta.sequence.stream,
            headers.get(TASK_NAME_HEADER, "?"),
            meta.num_delivered,
            reason,
            f": {shown}" if detail else "",
            self.settings.nats_dead_letter_stream,
        )
