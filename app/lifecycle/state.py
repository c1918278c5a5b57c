"""What the status API shows between dispatch and result, kept in Redis next to the result.

Keys (same prefix and TTL as the result, ``<RESULT_KEY_PREFIX>:<task_id>:<suffix>``):

* ``state``: ``{"status": "scheduled", "eta": ...}`` for a delayed task,
  ``{"status": "retrying", "attempt": n, "max_retries": m, "last_error": {...}, "eta": ...}``
  while a failed task waits for its next attempt;
* ``cancel``: set by a cancel request; a worker checks it before it runs a task, a running task
  through :class:`app.lifecycle.cancel.Cancellation`;
* ``progress``: ``{"value": 0.5, "message": "...", "at": <epoch>}``, the last progress a running
  task reported.

The final result always wins: once it is stored, these only add detail.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.queues import DEFAULT_QUEUE

STATE_SUFFIX = "state"
CANCEL_SUFFIX = "cancel"
PROGRESS_SUFFIX = "progress"


@dataclass(frozen=True)
class TaskRecord:
    """Everything Redis holds about one task (each part None when absent)."""

    result: dict[str, Any] | None
    task_name: str | None
    queue: str | None
    state: dict[str, Any] | None
    cancel_requested: bool
    progress: dict[str, Any] | None

    @property
    def known(self) -> bool:
        """Tell whether the task was ever dispatched (as far as Redis remembers)."""
        return self.result is not None or self.task_name is not None or self.state is not None


class LifecycleRecords:
    """The lifecycle keys of one result key prefix."""

    def __init__(self, redis: Redis, prefix: str, ttl: int) -> None:
        """Use a Redis client.

        :param redis: the Redis client.
        :param prefix: ``RESULT_KEY_PREFIX``.
        :param ttl: seconds every key lives (``RESULT_TTL_SECONDS``).
        """
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl

    def key(self, task_id: str, suffix: str) -> str:
        """Redis key of one part of a task's record."""
        return f"{self.prefix}:{task_id}:{suffix}" if suffix else f"{self.prefix}:{task_id}"

    async def set_state(self, task_id: str, state: dict[str, Any]) -> None:
        """Record what a task waits for (``scheduled``, ``retrying``)."""
        await self.redis.set(self.key(task_id, STATE_SUFFIX), json.dumps(state), ex=self.ttl)

    async def read_state(self, task_id: str) -> dict[str, Any] | None:
        """Read what a task waits for (None when nothing)."""
        raw = await self.redis.get(self.key(task_id, STATE_SUFFIX))
        return json.loads(raw) if raw is not None else None

    async def clear_state(self, task_id: str) -> None:
        """Forget what a task waited for (its definition could not be stored)."""
        await self.redis.delete(self.key(task_id, STATE_SUFFIX))

    async def request_cancel(self, task_id: str) -> None:
        """Set a task's cancel flag."""
        await self.redis.set(self.key(task_id, CANCEL_SUFFIX), b"1", ex=self.ttl)

    async def cancel_requested(self, task_id: str) -> bool:
        """Tell whether a task's cancel flag is set."""
        return bool(await self.redis.exists(self.key(task_id, CANCEL_SUFFIX)))

    async def set_progress(self, task_id: str, value: float, message: str | None) -> None:
        """Record a running task's progress."""
        body = {"value": value, "message": message, "at": round(time.time(), 3)}
        await self.redis.set(self.key(task_id, PROGRESS_SUFFIX), json.dumps(body), ex=self.ttl)

    async def read_progress(self, task_id: str) -> dict[str, Any] | None:
        """Read a task's last progress (None when it reported none)."""
        raw = await self.redis.get(self.key(task_id, PROGRESS_SUFFIX))
        return json.loads(raw) if raw is not None else None

    async def read(self, task_id: str, meta_key: str) -> TaskRecord:
        """Read a task's result and every part of its record in one round trip.

        :param task_id: the task's id.
        :param meta_key: the key of its dispatch record.
        :return: the record.
        """
        raw = await self.redis.mget(
            self.key(task_id, ""),
            meta_key,
            self.key(task_id, STATE_SUFFIX),
            self.key(task_id, CANCEL_SUFFIX),
            self.key(task_id, PROGRESS_SUFFIX),
        )
        result, meta, state, cancel, progress = raw
        record = json.loads(meta) if meta is not None else None
        return TaskRecord(
            result=json.loads(result) if result is not None else None,
            task_name=record["task_name"] if record is not None else None,
            # A record written before queues existed names none: such a task went to ``default``.
            queue=str(record.get("queue") or DEFAULT_QUEUE) if record is not None else None,
            state=json.loads(state) if state is not None else None,
            cancel_requested=cancel is not None,
            progress=json.loads(progress) if progress is not None else None,
        )
