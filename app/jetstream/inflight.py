"""Deliveries a worker process holds, kept alive with JetStream in-progress acks.

A delivery is held from the moment it reaches the process (before the receiver asks for it) until
it is acknowledged, given back or dead-lettered. While held, JetStream is told every
``keepalive_interval`` that it is still being worked on, so it is never delivered to a second
worker while this one runs it (taskiq-nats#16), however long it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.msg import Msg

from app.retry import describe_error

logger = logging.getLogger("kiqstack.broker")


def keepalive_interval(ack_wait_seconds: float) -> float:
    """Seconds between "still working" signals for a held delivery (a third of the ack wait).

    :param ack_wait_seconds: the consumer's ack wait.
    :return: the interval.
    """
    return max(0.5, ack_wait_seconds / 3)


class InFlight:
    """Deliveries this process holds: by reply subject, with the loop time of their last signal."""

    def __init__(self, ack_wait_seconds: float) -> None:
        """Create an empty set.

        :param ack_wait_seconds: the consumer's ack wait (sets the keep-alive interval).
        """
        self.interval = keepalive_interval(ack_wait_seconds)
        self.held: dict[str, tuple[Msg, float]] = {}
        #: The queue each held delivery came from (by reply subject).
        self.queues: dict[str, str] = {}
        #: Called whenever a delivery stops being held (a slot of its queue is free again).
        self.on_release: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected: Callable[[], bool] = lambda: True

    def __len__(self) -> int:
        """How many deliveries are held."""
        return len(self.held)

    def __contains__(self, reply: object) -> bool:
        """Tell whether the delivery with this reply subject is held."""
        return reply in self.held

    def hold(self, msg: Msg, queue: str = "") -> None:
        """Start holding a delivery (it is kept alive from now on).

        :param msg: the delivery.
        :param queue: the queue it came from (counted by :meth:`count`).
        """
        self.held[msg.reply] = (msg, asyncio.get_running_loop().time())
        self.queues[msg.reply] = queue

    def count(self, queue: str) -> int:
        """How many deliveries of this queue are held."""
        return sum(1 for held in self.queues.values() if held == queue)

    def release(self, msg: Msg) -> None:
        """Stop holding a delivery (acknowledged, given back or dead-lettered)."""
        if self.held.pop(msg.reply, None) is not None:
            self.queues.pop(msg.reply, None)
            if self.on_release is not None:
                self.on_release()

    def clear(self) -> None:
        """Forget every delivery (they are redelivered after their ack wait)."""
        self.held.clear()
        self.queues.clear()

    def start(self, connected: Callable[[], bool]) -> None:
        """Start the keep-alive loop.

        :param connected: tells whether NATS is connected (signals are not buffered meanwhile).
        """
        self.stop()
        self._connected = connected
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    def stop(self) -> None:
        """Stop the keep-alive loop."""
        if self._task is not None:
            self._task.cancel()
        self._task = None

    async def _keep_alive(self) -> None:
        """Tell JetStream that the held deliveries are still being worked on.

        Without this, a task that runs longer than ``ACK_WAIT_SECONDS`` is delivered again while
        it still runs (taskiq-nats#16). With it, ``ACK_WAIT_SECONDS`` is how long a worker may go
        silent, crashed or stuck, before its tasks go to another worker: a task may run longer,
        as long as its worker's event loop keeps turning. Each delivery is signalled once its last
        sign of life is ``interval`` old, checked four times per interval, so two signals are
        never more than 5/12 of ``ACK_WAIT_SECONDS`` apart.
        """
        tick = self.interval / 4
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            try:
                await self.signal_progress(loop.time() - self.interval)
            except Exception as exc:  # never let the keep-alive die
                logger.warning("keep-alive round failed: %s", describe_error(exc))

    async def signal_progress(self, older_than: float) -> None:
        """Send an in-progress ack for each delivery whose last sign of life is older than this.

        :param older_than: loop time.
        """
        if not self._connected():
            return  # signals would only be buffered; the first round after reconnecting sends
        now = asyncio.get_running_loop().time()
        for reply, (msg, since) in list(self.held.items()):
            if since > older_than:
                continue
            try:
                await msg.in_progress()
            except Exception as exc:
                logger.debug("in-progress signal failed: %s", exc)
                continue
            if reply in self.held:
                self.held[reply] = (msg, now)
