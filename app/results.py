"""Task results in Redis: JSON (never pickle), a TTL, a key prefix, and no silent loss.

A result that cannot be saved marks the delivery it belongs to, so the broker gives the message back
for redelivery instead of acknowledging it (see :func:`result_save_failed`).

Results are pushed, not polled for. A worker writes the results of the tasks that finish together
in one pipelined round trip (``SET`` each, then one ``PUBLISH`` of their ids on
``<RESULT_KEY_PREFIX>:done``); every ``set_result`` still returns only once its own ``SET`` is
acknowledged by Redis, so the broker's ack still follows the save. A waiting client keeps one
subscription to that channel: :meth:`KiqResultBackend.is_result_ready` (which taskiq's
``wait_result`` calls) and :meth:`KiqResultBackend.wait_for_result` (the API's ``?wait=``) register
the task id, check the key once (the result may already be there), then sleep until the
notification, with the key checked again at least every ``notify_wait_seconds``, so a lost
notification (Redis restart, subscription down) costs latency, never a result. Small results travel
inside the notification, which saves the client its ``GET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections import OrderedDict
from typing import Any, TypeVar

from redis.asyncio import Redis
from taskiq import TaskiqResult
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend
from taskiq_redis.exceptions import ResultIsMissingError

from app.config import Settings

_ReturnType = TypeVar("_ReturnType")

# Set in the context of the task that tried to save a result and failed. The taskiq Receiver
# awaits ``set_result`` and then calls the message's ``ack`` in the same asyncio task, so the
# broker's ack callback sees the flag and gives the message back instead of acknowledging it.
_save_failed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kiqstack_result_save_failed", default=False
)

META_SUFFIX = "meta"
DONE_SUFFIX = "done"

logger = logging.getLogger("kiqstack.results")


def result_save_failed() -> bool:
    """Tell whether saving the current task's result failed (in this asyncio task)."""
    return _save_failed.get()


class KiqResultBackend(RedisAsyncResultBackend[_ReturnType]):
    """taskiq-redis result backend with kiqstack's safe defaults and pushed results."""

    #: Longest a single :meth:`is_result_ready` call waits for the notification before it checks
    #: the key again and answers (taskiq's ``wait_result`` then sleeps ``check_interval`` and asks
    #: again). Also bounds how far ``wait_result(timeout=...)`` can overshoot its timeout.
    notify_wait_seconds = 0.5
    #: Results up to this size (serialized) ride inside the notification.
    inline_limit = 4096
    #: A flush within this long of the previous one counts as busy and waits
    #: ``batch_delay_seconds`` to gather more results into one round trip.
    batch_busy_seconds = 0.002
    batch_delay_seconds = 0.001
    _INLINE_CACHE = 10_000

    def __init__(self, settings: Settings) -> None:
        """Build the backend; no connection is opened until first use.

        :param settings: kiqstack settings.
        """
        super().__init__(
            settings.redis_url,
            result_ex_time=settings.result_ttl_seconds,
            serializer=JSONSerializer(),
            prefix_str=settings.result_key_prefix,
            socket_connect_timeout=5,
            socket_timeout=10,
        )
        self.ttl = settings.result_ttl_seconds
        self.prefix = settings.result_key_prefix
        self.channel = f"{self.prefix}:{DONE_SUFFIX}"
        # One client object over the pool: building a Redis() per call costs more CPU than the
        # command itself.
        self.redis: Redis = Redis(connection_pool=self.redis_pool)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset_loop_state()

    def _reset_loop_state(self) -> None:
        # Writes waiting for the next pipelined flush: (key, value, task id to announce, done).
        self._pending: list[tuple[str, bytes, str | None, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._last_flush = float("-inf")  # loop time the last batch was written
        # Clients: futures of the ids being waited for, and results that arrived inline.
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._inline: OrderedDict[str, bytes] = OrderedDict()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or reused from another event loop (tests)
            if self._listener is not None:
                self._listener.cancel()
            self._loop = loop
            self._reset_loop_state()
        return loop

    async def shutdown(self) -> None:
        """Stop listening for notifications, then close the connection pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None
        await super().shutdown()

    # -- worker side ------------------------------------------------------------------------
    async def set_result(self, task_id: str, result: TaskiqResult[_ReturnType]) -> None:
        """Save a result (batched with others finishing now); on failure flag the delivery.

        Returns once Redis has acknowledged this result's ``SET``.

        :param task_id: the task's id.
        :param result: what the task returned or raised.
        """
        try:
            value = self.serializer.dumpb(result.model_dump(mode="json"))
            await self._write(self.result_key(task_id), value, announce=task_id)
        except Exception:
            _save_failed.set(True)
            raise

    async def _write(self, key: str, value: bytes, announce: str | None = None) -> None:
        """``SET key value EX ttl`` in the next pipelined batch; return once Redis has it.

        :param announce: task id to publish on the notification channel with the batch.
        """
        loop = self._check_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((key, value, announce, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        """Write pending results, one pipelined round trip per batch, until none is left."""
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

    # -- client side ------------------------------------------------------------------------
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

    async def _wait_once(self, task_id: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a result; tell whether it is there."""
        if task_id in self._inline:
            return True
        key = self.result_key(task_id)
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

    async def is_result_ready(self, task_id: str) -> bool:
        """Tell whether a task's result is saved, waiting up to ``notify_wait_seconds`` for it.

        taskiq's ``wait_result`` calls this in a loop, so with the wait it sees a result as soon as
        it is announced instead of on its next poll; it still ends on its own ``timeout`` (give or
        take ``notify_wait_seconds``).

        :param task_id: the task's id.
        :return: True when the result is there.
        """
        self._check_loop()
        return await self._wait_once(task_id, self.notify_wait_seconds)

    async def wait_for_result(self, task_id: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a task's result.

        :param task_id: the task's id.
        :param seconds: how long to wait at most.
        :return: True when the result is there.
        """
        loop = self._check_loop()
        deadline = loop.time() + seconds
        while True:
            left = deadline - loop.time()
            if await self._wait_once(task_id, min(max(left, 0.0), self.notify_wait_seconds)):
                return True
            if loop.time() >= deadline:
                return False

    async def get_result(self, task_id: str, with_logs: bool = False) -> TaskiqResult[_ReturnType]:
        """Read a task's result (from the notification when it came inline).

        :param task_id: the task's id.
        :param with_logs: keep the task's logs in the result.
        :return: the result.
        :raises ResultIsMissingError: when there is no result.
        """
        raw = await self._raw_result(task_id)
        if raw is None:
            raise ResultIsMissingError
        result: TaskiqResult[_ReturnType] = TaskiqResult[_ReturnType].model_validate(
            self.serializer.loadb(raw)
        )
        if not with_logs:
            result.log = None
        return result

    async def _raw_result(self, task_id: str) -> bytes | None:
        """A stored result as saved: from the notification when it came inline, else Redis."""
        inline = self._inline.pop(task_id, None)
        if inline is not None:
            return inline
        stored = await self.redis.get(self.result_key(task_id))
        return stored.encode() if isinstance(stored, str) else stored

    async def read_result(self, task_id: str) -> dict[str, Any] | None:
        """A stored result as a dict (None when there is none).

        :param task_id: the task's id.
        :return: the result's fields, as the worker saved them.
        """
        raw = await self._raw_result(task_id)
        return json.loads(raw) if raw is not None else None

    def result_key(self, task_id: str) -> str:
        """Redis key of a task's result."""
        return f"{self.prefix}:{task_id}"

    def meta_key(self, task_id: str) -> str:
        """Redis key recording that the API dispatched a task (its name and time)."""
        return f"{self.prefix}:{task_id}:{META_SUFFIX}"

    async def ping(self) -> bool:
        """Tell whether Redis answers.

        :return: True when Redis answered PING.
        """
        return bool(await self.redis.ping())

    async def record_dispatch(self, task_id: str, task_name: str) -> None:
        """Remember a dispatched task so its status reads ``queued`` until the result lands.

        :param task_id: the task's id.
        :param task_name: the registered task name.
        """
        await self._write(self.meta_key(task_id), json.dumps({"task_name": task_name}).encode())

    async def forget_dispatch(self, task_id: str) -> None:
        """Drop the dispatch record of a task that could not be queued."""
        await self.redis.delete(self.meta_key(task_id))

    async def read_status(self, task_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """Read a task's stored result and dispatch record in one round trip.

        :param task_id: the task's id.
        :return: the result as a dict (or None) and the task name on record (or None).
        """
        raw_result, raw_meta = await self.redis.mget(
            self.result_key(task_id), self.meta_key(task_id)
        )
        result = json.loads(raw_result) if raw_result is not None else None
        task_name = json.loads(raw_meta)["task_name"] if raw_meta is not None else None
        return result, task_name
