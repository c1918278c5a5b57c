"""Waiting for results without polling: one subscription to the notification channel.

A waiting client keeps one subscription to ``<RESULT_KEY_PREFIX>:done``. :meth:`ResultWaiter.wait`
registers the task id, checks the key once (the result may already be there), then sleeps until
the notification, with the key checked again at least every ``notify_wait_seconds``, so a lost
notification (Redis restart, subscription down) costs latency, never a result. Small results travel
inside the notification (:mod:`app.results.writer`), which saves the client its ``GET``.

A client that dispatches a task while subscribed first marks its id *expected* (:meth:`expect`,
called by the broker's ``kick`` before the publish): its announcement is kept even if it comes
before anyone waits, so the first wait for that id needs no ``EXISTS`` round trip, provided the
subscription has not been interrupted since (each subscription has its own epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable

from redis.asyncio import Redis

logger = logging.getLogger("kiqstack.results")

_ANNOUNCED = -1  # an expected id whose announcement came before anyone waited


class ResultWaiter:
    """Futures woken by the notification channel, and the results that came inline."""

    #: Longest a single :meth:`wait_once` waits for the notification before it checks the key
    #: again and answers.
    notify_wait_seconds = 0.5
    _INLINE_CACHE = 10_000
    #: Most task ids kept as expected (dispatched, not yet waited for); the oldest go first and
    #: are then checked with ``EXISTS`` as any other id.
    _EXPECTED_CACHE = 10_000

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
        # Ids dispatched while subscribed: the subscription epoch then, or _ANNOUNCED.
        self._expected: OrderedDict[str, int] = OrderedDict()
        self._epoch = 0  # counts subscriptions (and their ends)

    def expect(self, task_id: str) -> None:
        """Keep the announcement of a task about to be dispatched, even before anyone waits.

        Does nothing unless this client is subscribed (a client that never waits never is).

        :param task_id: the task's id.
        """
        if self._subscribed.is_set():
            expected = self._expected
            expected[task_id] = self._epoch
            if len(expected) > self._EXPECTED_CACHE:
                expected.popitem(last=False)

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
                        self._epoch += 1
                        self._subscribed.set()
                        # Anything published while we were not subscribed was missed: every
                        # waiter checks its key again.
                        self._wake_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("result notifications interrupted: %s", exc)
            finally:
                self._epoch += 1  # expectations from before may have missed announcements
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
                if task_id in self._expected:
                    self._expected[task_id] = _ANNOUNCED
                    if value:
                        self._keep_inline(task_id, value)
                continue
            if value:
                self._inline[task_id] = value
                if len(self._inline) > self._INLINE_CACHE:
                    self._inline.popitem(last=False)
            for future in futures:
                if not future.done():
                    future.set_result(True)

    def _keep_inline(self, task_id: str, value: bytes) -> None:
        self._inline[task_id] = value
        if len(self._inline) > self._INLINE_CACHE:
            self._inline.popitem(last=False)

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
        if task_id in self._inline or self._expected.get(task_id) == _ANNOUNCED:
            self._expected.pop(task_id, None)
            return True
        key = self.key_of(task_id)
        if seconds <= 0 or not await self._ensure_listener():
            return bool(await self.redis.exists(key))
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        try:
            expected = self._expected.pop(task_id, None)
            if expected == _ANNOUNCED:
                return True
            # Expected in this same subscription: its announcement cannot have been missed.
            # Otherwise (subscribed before this check) a result saved after it is announced.
            unbroken = expected == self._epoch and self._subscribed.is_set()
            if not unbroken and await self.redis.exists(key):
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
