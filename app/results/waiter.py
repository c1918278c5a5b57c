"""Waiting for results without polling: one subscription to the notification channel.

A waiting client keeps one subscription to ``<RESULT_KEY_PREFIX>:done``. :meth:`ResultWaiter.wait`
registers the task id, checks the key once (the result may already be there), then sleeps until
the notification, with the key checked again at least every ``notify_wait_seconds``, so a lost
notification (Redis restart, subscription down) costs latency, never a result. Small results travel
inside the notification (:mod:`app.results.writer`), which saves the client its ``GET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable

from redis.asyncio import Redis

logger = logging.getLogger("kiqstack.results")


class ResultWaiter:
    """Futures woken by the notification channel, and the results that came inline."""

    #: Longest a single :meth:`wait_once` waits for the notification before it checks the key
    #: again and answers.
    notify_wait_seconds = 0.5
    _INLINE_CACHE = 10_000

    def __init__(self, redis: Redis, channel: str, key_of: Callable[[str], str]) -> None:
        """Create the waiter (nothing is subscribed until the first wait).

        :param redis: the Redis client.
        :param channel: the notification channel.
        :param key_of: the Redis key of a task id's result.
        """
        self.redis = redis
        self.channel = channel
        self.key_of = key_of
        self.reset()

    def reset(self) -> None:
        """Forget the event-loop objects (first use in a new event loop)."""
        # Futures of the ids being waited for, and results that arrived inline.
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._inline: OrderedDict[str, bytes] = OrderedDict()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def cancel(self) -> None:
        """Stop listening (without waiting for the subscription to close)."""
        if self._listener is not None:
            self._listener.cancel()

    async def close(self) -> None:
        """Stop listening for notifications."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None

    def pop_inline(self, task_id: str) -> bytes | None:
        """Take the result of a task that came with its notification out of the cache."""
        return self._inline.pop(task_id, None)

    async def _listen(self) -> None:
        """Keep a subscription to the notification channel; resubscribe after any failure."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    kind = message["type"]
                    if kind == "message":
                        self._notified(message["data"])
                    elif kind == "subscribe":
                        self._subscribed.set()
                        # Anything published while we were not subscribed was missed: every
                        # waiter checks its key again.
                        self._wake_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("result notifications interrupted: %s", exc)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            self._wake_all()
            await asyncio.sleep(0.5)

    def _notified(self, data: bytes) -> None:
        waiters = self._waiters
        for line in data.split(b"\n"):
            raw_id, _, value = line.partition(b" ")
            task_id = raw_id.decode()
            futures = waiters.get(task_id)
            if futures is None:
                continue
            if value:
                self._inline[task_id] = value
                if len(self._inline) > self._INLINE_CACHE:
                    self._inline.popitem(last=False)
            for future in futures:
                if not future.done():
                    future.set_result(True)

    def _wake_all(self) -> None:
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(False)

    async def _ensure_listener(self) -> bool:
        """Start the subscription if needed; tell whether it is active."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        if not self._subscribed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self.notify_wait_seconds)
        return self._subscribed.is_set()

    async def wait_once(self, task_id: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a result; tell whether it is there.

        :param task_id: the task's id.
        :param seconds: how long to wait at most (0: only check).
        :return: True when the result is there.
        """
        if task_id in self._inline:
            return True
        key = self.key_of(task_id)
        if seconds <= 0 or not await self._ensure_listener():
            return bool(await self.redis.exists(key))
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        try:
            # Subscribed before this check: a result saved after it is announced to us.
            if await self.redis.exists(key):
                return True
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(future, seconds):
                    return True
            return bool(await self.redis.exists(key))
        finally:
            futures = self._waiters.get(task_id)
            if futures is not None:
                futures.remove(future)
                if not futures:
                    del self._waiters[task_id]

    async def wait(self, task_id: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a task's result, checking the key every so often.

        :param task_id: the task's id.
        :param seconds: how long to wait at most.
        :return: True when the result is there.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            left = deadline - loop.time()
            if await self.wait_once(task_id, min(max(left, 0.0), self.notify_wait_seconds)):
                return True
            if loop.time() >= deadline:
                return False
