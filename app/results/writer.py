"""Batched result writes: the results of tasks finishing together go to Redis in one round trip.

Each write is a ``SET key value EX ttl``; a write that announces a task id also publishes it on
the notification channel (:mod:`app.results.waiter`), with the value inline when it is small. A
writer still returns only once Redis acknowledged *its own* ``SET``, so the broker's ack still
follows the save.

A batch goes out on a connection of the writer's own, packed and read back directly: redis-py's
``Pipeline`` (a pool checkout with its health check, the retry wrapper, observability hooks and
reply callbacks per batch) cost more CPU than the commands themselves. A batch that meets a broken
connection is sent again once on a fresh one (``SET`` with the same value is idempotent, a
repeated announcement harmless); what Redis answers with an error reaches that write's caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Failures of the connection itself (not answers of Redis): the batch is sent once more.
_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)

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
        self.ttl_arg = str(ttl).encode()
        self.channel = channel
        self._connection: AbstractConnection | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the event-loop objects (first use in a new event loop)."""
        # Writes waiting for the next pipelined flush: (key, value, task id to announce, done).
        self._pending: list[tuple[str, bytes, str | None, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._last_flush = float("-inf")  # loop time the last batch was written
        # A connection belongs to the event loop that opened it: a new loop opens its own.
        self._connection = None

    async def close(self) -> None:
        """Close the writer's connection (it is opened again by the next batch)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send commands in one write and read every reply (an error reply is returned, not raised).

        :raises Exception: when the connection fails twice in a row (it is closed then).
        """
        for attempt in (1, 2):
            connection = self._connection
            if connection is None:
                pool = self.redis.connection_pool
                connection = self._connection = pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await connection.connect()
                await connection.send_packed_command(
                    connection.pack_commands(commands), check_health=False
                )
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                return replies
            except BaseException as exc:
                # The replies on the wire are unknown now: never reuse this connection.
                self._connection = None
                await connection.disconnect()
                if attempt == 2 or not isinstance(exc, _BROKEN):
                    raise
                logger.debug("result write: connection broken (%s), sending again", exc)
        raise AssertionError("unreachable")

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
            commands: list[tuple[Any, ...]] = []
            lines = []
            for key, value, task_id, _ in batch:
                commands.append((b"SET", key, value, b"EX", self.ttl_arg))
                if task_id is not None:
                    inline = len(value) <= self.inline_limit and b"\n" not in value
                    lines.append(task_id.encode() + b" " + value if inline else task_id.encode())
            if lines:
                commands.append((b"PUBLISH", self.channel, b"\n".join(lines)))
            try:
                replies = await self._send(commands)
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
