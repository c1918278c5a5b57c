"""Task results in Redis: JSON (never pickle), a TTL, a key prefix, and no silent loss.

A result that cannot be saved marks the delivery it belongs to, so the broker gives the message back
for redelivery instead of acknowledging it (see :func:`result_save_failed`).
"""

from __future__ import annotations

import contextvars
import json
from typing import Any, TypeVar

from redis.asyncio import Redis
from taskiq import TaskiqResult
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisAsyncResultBackend

from app.config import Settings

_ReturnType = TypeVar("_ReturnType")

# Set in the context of the task that tried to save a result and failed. The taskiq Receiver
# awaits ``set_result`` and then calls the message's ``ack`` in the same asyncio task, so the
# broker's ack callback sees the flag and gives the message back instead of acknowledging it.
_save_failed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kiqstack_result_save_failed", default=False
)

META_SUFFIX = "meta"


def result_save_failed() -> bool:
    """Tell whether saving the current task's result failed (in this asyncio task)."""
    return _save_failed.get()


class KiqResultBackend(RedisAsyncResultBackend[_ReturnType]):
    """taskiq-redis result backend with kiqstack's safe defaults."""

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

    async def set_result(self, task_id: str, result: TaskiqResult[_ReturnType]) -> None:
        """Save a result; on failure flag the current delivery and re-raise.

        :param task_id: the task's id.
        :param result: what the task returned or raised.
        """
        try:
            await super().set_result(task_id, result)
        except Exception:
            _save_failed.set(True)
            raise

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
        async with Redis(connection_pool=self.redis_pool) as redis:
            return bool(await redis.ping())

    async def record_dispatch(self, task_id: str, task_name: str) -> None:
        """Remember a dispatched task so its status reads ``queued`` until the result lands.

        :param task_id: the task's id.
        :param task_name: the registered task name.
        """
        async with Redis(connection_pool=self.redis_pool) as redis:
            await redis.set(
                self.meta_key(task_id), json.dumps({"task_name": task_name}), ex=self.ttl
            )

    async def forget_dispatch(self, task_id: str) -> None:
        """Drop the dispatch record of a task that could not be queued."""
        async with Redis(connection_pool=self.redis_pool) as redis:
            await redis.delete(self.meta_key(task_id))

    async def read_status(self, task_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """Read a task's stored result and dispatch record in one round trip.

        :param task_id: the task's id.
        :return: the result as a dict (or None) and the task name on record (or None).
        """
        async with Redis(connection_pool=self.redis_pool) as redis:
            raw_result, raw_meta = await redis.mget(
                self.result_key(task_id), self.meta_key(task_id)
            )
        result = json.loads(raw_result) if raw_result is not None else None
        task_name = json.loads(raw_meta)["task_name"] if raw_meta is not None else None
        return result, task_name
