"""Batched result writes: the results of tasks finishing together go to Redis in one round trip.

Each write is a ``SET key value EX ttl``; a write that announces a task id also publishes it on
the notification channel (:mod:`app.results.waiter`), with the value inline when it is small. A
writer still returns only once Redis acknowledged *its own* ``SET``, so the broker's ack still
follows the save.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

logger = logging.getLogger("kiqstack.results")


class BatchedWriter:
    """Pipelined ``SET``s (and one ``PUBLISH`` per batch) on one Redis client."""

    #: Results up to this size (serialized) ride inside the notification.
    inline_limit = 4096
    #: A flush within this long of the previous one counts as busy and waits
    #: ``batch_delay_seconds`` to gather more results into one round trip.
    batch_busy_seconds = 0.002
    batch_delay_seconds = 0.001

    def __init__(self, redis: Redis, ttl: int, channel: str) -> None:
        """Create the writer (nothing is sent until :meth:`write`).

        :param redis: the Redis client.
        :param ttl: seconds every written key lives.
        :param channel: the notification channel announced task ids go to.
        """
        self.redis = redis
        self.ttl = ttl
        self.channel = channel
        self.reset()

    def reset(self) -> None:
        """Forget the event-loop objects (first use in a new event loop)."""
        # Writes waiting for the next pipelined flush: (key, value, task id to announce, done).
        self._pending: list[tuple[str, bytes, str | None, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._last_flush = float("-inf")  # loop time the last batch was written

    async def write(self, key: str, value: bytes, announce: str | None = None) -> None:
        """``SET key value EX ttl`` in the next pipelined batch; return once Redis has it.

        :param key: the Redis key.
        :param value: the value.
        :param announce: task id to publish on the notification channel with the batch.
        :raises Exception: what Redis answered this ``SET`` with (nothing is retried).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((key, value, announce, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        """Write pending values, one pipelined round trip per batch, until none is left."""
        # Busy (the previous batch went out moments ago): give the tasks finishing now a
        # millisecond to add their results, so one round trip carries many of them. Idle: write at
        # once, so a lone result costs no extra latency.
        loop = asyncio.get_running_loop()
        busy = loop.time() - self._last_flush < self.batch_busy_seconds
        await asyncio.sleep(self.batch_delay_seconds if busy else 0)
        while self._pending:
            batch, self._pending = self._pending, []
            pipe = self.redis.pipeline(transaction=False)
            lines = []
            for key, value, task_id, _ in batch:
                pipe.set(key, value, ex=self.ttl)
                if task_id is not None:
                    inline = len(value) <= self.inline_limit and b"\n" not in value
                    lines.append(task_id.encode() + b" " + value if inline else task_id.encode())
            if lines:
                pipe.publish(self.channel, b"\n".join(lines))
            try:
                replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                replies = [exc] * (len(batch) + 1)
            self._last_flush = loop.time()
            for (_, _, _, done), reply in zip(batch, replies, strict=False):
                if done.done():
                    continue
                if isinstance(reply, BaseException):
                    done.set_exception(reply)
                else:
                    done.set_result(None)
            if lines and isinstance(replies[-1], BaseException):
                # Saved but not announced: waiters find the key when they check it again.
                logger.debug("result notification failed: %s", replies[-1])
