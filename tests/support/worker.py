"""A worker inside the test process: taskiq's receiver on a broker's :meth:`listen`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

from app.broker import KiqBroker


class InProcessWorker:
    """Runs every delivery of ``broker`` through taskiq's receiver, each in a task of its own.

    The broker stays a client too (the API uses it in the same process); what a worker process
    adds (probes, logging) is not started.
    """

    def __init__(self, broker: KiqBroker) -> None:
        self.broker = broker
        self.receiver = Receiver(broker, run_startup=False, ack_type=AcknowledgeType.WHEN_SAVED)
        self._loop: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> InProcessWorker:
        self._loop = asyncio.create_task(self._consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _consume(self) -> None:
        async for delivery in self.broker.listen():
            task = asyncio.create_task(self.receiver.callback(delivery))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def drain(self, timeout: float = 10) -> None:
        """Wait (up to ``timeout``) until every task started so far has finished."""
        if self._running:
            await asyncio.wait_for(asyncio.gather(*self._running), timeout)

    async def stop(self) -> None:
        """Stop taking deliveries; wait for the running tasks."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        await self.drain()
