"""Dispatch records: what makes ``GET /tasks/{id}`` answer ``queued`` before a result exists.

The API records a task (its name and queue) in Redis before it publishes it, next to where its
result will be (``<RESULT_KEY_PREFIX>:<task_id>:meta``, same TTL), and reads both in one round
trip.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from app.results.writer import BatchedWriter

#: A task's dispatch record: its ``task_name`` and ``queue``.
DispatchRecord = dict[str, Any]

META_SUFFIX = "meta"


class DispatchRecords:
    """Dispatch records of one key prefix."""

    def __init__(self, redis: Redis, prefix: str, writer: BatchedWriter) -> None:
        """Use a Redis client and the batched writer of the results.

        :param redis: the Redis client.
        :param prefix: ``RESULT_KEY_PREFIX``.
        :param writer: writes the records (with the results' TTL, batched with them).
        """
        self.redis = redis
        self.prefix = prefix
        self.writer = writer

    def result_key(self, task_id: str) -> str:
        """Redis key of a task's result."""
        return f"{self.prefix}:{task_id}"

    def meta_key(self, task_id: str) -> str:
        """Redis key recording that the API dispatched a task (its name)."""
        return f"{self.prefix}:{task_id}:{META_SUFFIX}"

    async def record(self, task_id: str, task_name: str, queue: str) -> None:
        """Remember a dispatched task so its status reads ``queued`` until the result lands.

        :param task_id: the task's id.
        :param task_name: the registered task name.
        :param queue: the task's queue.
        :raises Exception: what Redis answered (the task must not be queued then).
        """
        record = {"task_name": task_name, "queue": queue}
        await self.writer.write(self.meta_key(task_id), json.dumps(record).encode())

    async def forget(self, task_id: str) -> None:
        """Drop the dispatch record of a task that could not be queued."""
        await self.redis.delete(self.meta_key(task_id))

    async def read_status(
        self, task_id: str
    ) -> tuple[dict[str, Any] | None, DispatchRecord | None]:
        """Read a task's stored result and dispatch record in one round trip.

        :param task_id: the task's id.
        :return: the result as a dict (or None) and the dispatch record (or None): its
            ``task_name`` and ``queue`` (absent in a record written before queues existed).
        """
        raw_result, raw_meta = await self.redis.mget(
            self.result_key(task_id), self.meta_key(task_id)
        )
        result = json.loads(raw_result) if raw_result is not None else None
        record = json.loads(raw_meta) if raw_meta is not None else None
        return result, record
