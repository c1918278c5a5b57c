"""Task results in Redis: JSON (never pickle), a TTL, a key prefix, and no silent loss.

A result that cannot be saved marks the delivery it belongs to, so the broker gives the message back
for redelivery instead of acknowledging it (see :func:`result_save_failed`).

:class:`KiqResultBackend` puts three parts together, each in a module of its own:

* :mod:`app.results.writer`: the results of the tasks that finish together go to Redis in one
  pipelined round trip, announced on ``<RESULT_KEY_PREFIX>:done``; every ``set_result`` still
  returns only once its own ``SET`` is acknowledged, so the broker's ack still follows the save;
* :mod:`app.results.waiter`: a waiting client (``wait_result``, the API's ``?wait=``) is woken by
  that announcement, not by polling, with the key checked again now and then;
* :mod:`app.results.records`: the API's dispatch records (``queued`` before a result exists).

The Redis client can be given (tests use ``fakeredis``); by default it is made from ``REDIS_URL``
without connecting.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any, TypeVar

from redis.asyncio import Redis
from taskiq import TaskiqResult
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend
from taskiq_redis.exceptions import ResultIsMissingError

from app.config import Settings
from app.lifecycle.state import LifecycleRecords, TaskRecord
from app.results.records import DispatchRecord, DispatchRecords
from app.results.waiter import ResultWaiter
from app.results.writer import BatchedWriter

_ReturnType = TypeVar("_ReturnType")

# Set in the context of the task that tried to save a result and failed. The taskiq Receiver
# awaits ``set_result`` and then calls the message's ``ack`` in the same asyncio task, so the
# broker's ack callback sees the flag and gives the message back instead of acknowledging it.
_save_failed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kiqstack_result_save_failed", default=False
)

DONE_SUFFIX = "done"


def result_save_failed() -> bool:
    """Tell whether saving the current task's result failed (in this asyncio task)."""
    return _save_failed.get()


class KiqResultBackend(RedisAsyncResultBackend[_ReturnType]):
    """taskiq-redis result backend with kiqstack's safe defaults and pushed results."""

    #: Longest a single :meth:`is_result_ready` call waits for the notification before it checks
    #: the key again and answers (taskiq's ``wait_result`` then sleeps ``check_interval`` and asks
    #: again). Also bounds how far ``wait_result(timeout=...)`` can overshoot its timeout.
    notify_wait_seconds = ResultWaiter.notify_wait_seconds
    #: Results up to this size (serialized) ride inside the notification.
    inline_limit = BatchedWriter.inline_limit

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        """Build the backend; no connection is opened until first use.

        :param settings: kiqstack settings.
        :param redis: the Redis client to use (default: one on ``REDIS_URL``).
        """
        super().__init__(
            settings.redis_url,
            result_ex_time=settings.result_ttl_seconds,
            serializer=JSONSerializer(),
            prefix_str=settings.result_key_prefix,
            socket_connect_timeout=5,
            socket_timeout=10,
        )
        if redis is not None:
            self.redis_pool = redis.connection_pool  # type: ignore[assignment]  # any pool will do
        self.ttl = settings.result_ttl_seconds
        self.prefix = settings.result_key_prefix
        self.channel = f"{self.prefix}:{DONE_SUFFIX}"
        # One client object over the pool: building a Redis() per call costs more CPU than the
        # command itself.
        self.redis: Redis = redis if redis is not None else Redis(connection_pool=self.redis_pool)
        self.writer = BatchedWriter(self.redis, self.ttl, self.channel)
        self.records = DispatchRecords(self.redis, self.prefix, self.writer)
        self.waiter = ResultWaiter(self.redis, self.channel, self.records.result_key)
        self.lifecycle = LifecycleRecords(self.redis, self.prefix, self.ttl)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or reused from another event loop (tests)
            self.waiter.cancel()
            self._loop = loop
            self.writer.reset()
            self.waiter.reset()
        return loop

    async def shutdown(self) -> None:
        """Stop listening for notifications, then close the connection pool."""
        await self.waiter.close()
        await self.writer.close()
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
            self._check_loop()
            await self.writer.write(self.result_key(task_id), value, announce=task_id)
        except Exception:
            _save_failed.set(True)
            raise

    # -- client side ------------------------------------------------------------------------
    async def is_result_ready(self, task_id: str) -> bool:
        """Tell whether a task's result is saved, waiting up to ``notify_wait_seconds`` for it.

        taskiq's ``wait_result`` calls this in a loop, so with the wait it sees a result as soon as
        it is announced instead of on its next poll; it still ends on its own ``timeout`` (give or
        take ``notify_wait_seconds``).

        :param task_id: the task's id.
        :return: True when the result is there.
        """
        self._check_loop()
        return await self.waiter.wait_once(task_id, self.notify_wait_seconds)

    def expect(self, task_id: str) -> None:
        """Note a task this process is about to dispatch (:meth:`ResultWaiter.expect`).

        :param task_id: the task's id.
        """
        self.waiter.expect(task_id)

    async def wait_for_result(self, task_id: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a task's result.

        :param task_id: the task's id.
        :param seconds: how long to wait at most.
        :return: True when the result is there.
        """
        self._check_loop()
        return await self.waiter.wait(task_id, seconds)

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
        """Read a stored result as saved: from the notification when it came inline, else Redis."""
        inline = self.waiter.pop_inline(task_id)
        if inline is not None:
            return inline
        stored = await self.redis.get(self.result_key(task_id))
        return stored.encode() if isinstance(stored, str) else stored

    async def read_result(self, task_id: str) -> dict[str, Any] | None:
        """Read a stored result as a dict (None when there is none).

        :param task_id: the task's id.
        :return: the result's fields, as the worker saved them.
        """
        raw = await self._raw_result(task_id)
        return json.loads(raw) if raw is not None else None

    def result_key(self, task_id: str) -> str:
        """Redis key of a task's result."""
        return self.records.result_key(task_id)

    def meta_key(self, task_id: str) -> str:
        """Redis key recording that the API dispatched a task (its name and time)."""
        return self.records.meta_key(task_id)

    async def ping(self) -> bool:
        """Tell whether Redis answers.

        :return: True when Redis answered PING.
        """
        return bool(await self.redis.ping())

    # -- dispatch records (the API) -----------------------------------------------------------
    async def record_dispatch(self, task_id: str, task_name: str, queue: str) -> None:
        """Remember a dispatched task so its status reads ``queued`` until the result lands.

        :param task_id: the task's id.
        :param task_name: the registered task name.
        :param queue: the task's queue.
        """
        self._check_loop()
        await self.records.record(task_id, task_name, queue)

    async def forget_dispatch(self, task_id: str) -> None:
        """Drop the dispatch record of a task that could not be queued."""
        await self.records.forget(task_id)

    async def read_record(self, task_id: str) -> TaskRecord:
        """Read a task's result, dispatch record and lifecycle state in one round trip.

        :param task_id: the task's id.
        :return: the record (:class:`app.lifecycle.state.TaskRecord`).
        """
        return await self.lifecycle.read(task_id, self.meta_key(task_id))

    async def read_status(
        self, task_id: str
    ) -> tuple[dict[str, Any] | None, DispatchRecord | None]:
        """Read a task's stored result and dispatch record in one round trip.

        :param task_id: the task's id.
        :return: the result as a dict (or None) and the dispatch record (or None).
        """
        return await self.records.read_status(task_id)
