"""Idempotent dispatch: the same ``Idempotency-Key`` queues a task once.

A dispatch with a key first claims it in Redis (``SET NX``: atomic, so it holds across API replicas)
with a record ``{task_id, task_name, fingerprint, state}``. The record starts ``pending`` and turns
``queued`` once NATS confirmed the message; it is kept for ``IDEMPOTENCY_TTL_SECONDS``. A later
dispatch with the same key:

* with another task or other arguments (fingerprint) is refused (422);
* of a ``queued`` record returns the first task, nothing is sent;
* of a ``pending`` record (the first attempt failed or timed out: it may have reached NATS, or is
  still running) publishes the same message again with the **same task id**. The task id is the
  JetStream message id, so NATS drops the copy if the first one did land. That holds within the
  stream's duplicate window (120 s) of the first attempt; a retry of an unconfirmed dispatch that
  comes later gets the first task if it has a result, else 409 (sending it again could run it
  twice).

From Python: ``await kiq_once(task, key, *args, **kwargs)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, ParamSpec, TypeVar, cast

from pydantic_core import to_jsonable_python
from redis.exceptions import RedisError
from taskiq import AsyncResultBackend, AsyncTaskiqTask
from taskiq.decor import AsyncTaskiqDecoratedTask

from app import metrics
from app.broker import KiqBroker
from app.dispatch import dispatch
from app.errors import (
    IdempotencyKeyReusedError,
    IdempotencyUnconfirmedError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from app.queues import queue_of

logger = logging.getLogger("kiqstack.api")

_P = ParamSpec("_P")
_ReturnT = TypeVar("_ReturnT")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
#: Room left at the end of JetStream's duplicate window for the re-sent message to reach NATS
#: (nats-py gives up on a publish after 5 s).
REPUBLISH_MARGIN_SECONDS = 10.0

State = Literal["pending", "queued"]


def check_key(key: str) -> str:
    """Validate an idempotency key: 1 to 255 printable ASCII characters, no spaces.

    :raises InvalidRequestError: naming the problem.
    """
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" for c in key):
        raise InvalidRequestError(
            problem=f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            "without spaces (a UUID is a good choice)"
        )
    return key


def fingerprint(task_name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """Digest what a dispatch asks for: the task and its arguments (key order ignored).

    :return: hex SHA-256.
    """
    canonical = json.dumps(
        to_jsonable_python([task_name, args, kwargs], fallback=repr),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Record:
    """What Redis remembers about an idempotency key."""

    task_id: str
    task_name: str
    fingerprint: str
    state: State
    since: float  # epoch seconds of the first attempt

    def dumps(self) -> str:
        """JSON of the record."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> Record:
        """Read a record saved by :meth:`dumps`."""
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Outcome:
    """The task a dispatch with a key stands for."""

    task_id: str
    replayed: bool  # True: an earlier dispatch with this key queued it


class IdempotencyStore:
    """Idempotency records in Redis, next to the results (same prefix, same server)."""

    def __init__(self, broker: KiqBroker) -> None:
        """Use the broker's Redis connection and settings.

        :param broker: the kiqstack broker.
        """
        self.broker = broker
        self.redis = broker.results.redis
        self.prefix = f"{broker.settings.result_key_prefix}:idem"
        self.ttl = broker.settings.idempotency_ttl_seconds
        #: How long after the first attempt an unconfirmed dispatch may be sent again.
        self.republish_window = max(0.0, broker.duplicate_window - REPUBLISH_MARGIN_SECONDS)

    def redis_key(self, key: str) -> str:
        """Redis key of an idempotency key (hashed: any length and characters)."""
        return f"{self.prefix}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def claim(self, key: str, record: Record) -> Record | None:
        """Store ``record`` unless the key is taken (``SET NX``).

        :return: None when this call claimed the key, else the record already there.
        """
        name = self.redis_key(key)
        for _ in range(3):
            if await self.redis.set(name, record.dumps(), nx=True, ex=self.ttl):
                return None
            raw = await self.redis.get(name)
            if raw is not None:
                return Record.loads(raw)
            # Expired between SET NX and GET: try again.
        raise RedisError(f"could not claim idempotency key {key!r}")

    async def confirm(self, key: str, record: Record) -> None:
        """Mark the record ``queued`` (NATS has the message) for the whole window."""
        queued = dataclasses.replace(record, state="queued")
        await self.redis.set(self.redis_key(key), queued.dumps(), xx=True, ex=self.ttl)

    async def release(self, key: str) -> None:
        """Forget a key whose dispatch can never succeed (nothing was sent)."""
        await self.redis.delete(self.redis_key(key))


async def dispatch_once(
    broker: KiqBroker,
    task: AsyncTaskiqDecoratedTask[Any, Any],
    key: str,
    args: list[Any],
    kwargs: dict[str, Any],
    labels: dict[str, Any] | None = None,
) -> Outcome:
    """Queue a task unless the same key already queued it (see the module docstring).

    :param broker: the started broker.
    :param task: the registered task.
    :param key: the idempotency key.
    :param args: positional arguments (already validated).
    :param kwargs: keyword arguments (already validated).
    :param labels: extra labels of the dispatch (a delay).
    :return: the task id, and whether an earlier dispatch queued it.
    :raises IdempotencyKeyReusedError: the key was used with another task or other arguments.
    :raises IdempotencyUnconfirmedError: too late to send an unconfirmed dispatch again.
    :raises DispatchError: NATS did not take the message (retry with the same key).
    """
    store = IdempotencyStore(broker)
    name = task.task_name
    digest = fingerprint(name, args, kwargs)
    mine = Record(broker.id_generator(), name, digest, "pending", time.time())
    first = await store.claim(key, mine)
    if first is None:
        await _send(store, key, mine, broker, task, args, kwargs, labels)
        return Outcome(mine.task_id, replayed=False)
    if first.fingerprint != mine.fingerprint:
        raise IdempotencyKeyReusedError(key=key, first=f"task {first.task_name!r}")
    metrics.IDEMPOTENT_REPLAYS.labels(name, queue_of(task.labels)).inc()
    if first.state == "pending":
        if time.time() - first.since < store.republish_window:
            # The first attempt failed, timed out or is still on its way: send the same message
            # again; JetStream drops it if the first one landed.
            await _send(store, key, first, broker, task, args, kwargs, labels)
        elif not await store.redis.exists(broker.results.result_key(first.task_id)):
            raise IdempotencyUnconfirmedError(
                key=key, task_id=first.task_id, window=store.republish_window
            )
    return Outcome(first.task_id, replayed=True)


async def _send(
    store: IdempotencyStore,
    key: str,
    record: Record,
    broker: KiqBroker,
    task: AsyncTaskiqDecoratedTask[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    labels: dict[str, Any] | None,
) -> None:
    try:
        await dispatch(broker, task, args, kwargs, task_id=record.task_id, labels=labels)
    except PayloadTooLargeError:
        await store.release(key)  # never sent, and never will be with these arguments
        raise
    try:
        await store.confirm(key, record)
    except RedisError as exc:
        # Queued all the same; a retry within the duplicate window re-sends it harmlessly.
        logger.warning("task %s queued, idempotency record not confirmed: %s", record.task_id, exc)


async def kiq_once(
    task: AsyncTaskiqDecoratedTask[_P, _ReturnT],
    key: str,
    /,
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> AsyncTaskiqTask[_ReturnT]:
    """``task.kiq(*args, **kwargs)``, at most once per ``key`` within the idempotency window.

    Call it again with the same key (after a crash, a timeout, a ``DispatchError``) and it returns
    the task the first call queued instead of queueing another: the same guarantee as the API's
    ``Idempotency-Key`` header, sharing its records (a key used over HTTP is honoured here too).

    :param task: a task registered on kiqstack's broker (``@register_task()``).
    :param key: the idempotency key (1 to 255 printable ASCII characters).
    :param args: the task's positional arguments.
    :param kwargs: the task's keyword arguments.
    :return: the task handle (``await handle.wait_result(timeout=...)``).
    :raises IdempotencyKeyReusedError: the key was used with another task or other arguments.
    :raises IdempotencyUnconfirmedError: see :func:`dispatch_once`.
    :raises DispatchError: NATS did not take the message (call again with the same key).
    """
    broker = task.broker
    if not isinstance(broker, KiqBroker):
        raise TypeError(f"kiq_once needs a task of kiqstack's broker, not {type(broker).__name__}")
    outcome = await dispatch_once(broker, task, check_key(key), list(args), dict(kwargs))
    backend = cast("AsyncResultBackend[_ReturnT]", broker.result_backend)  # taskiq: untyped
    return AsyncTaskiqTask(outcome.task_id, result_backend=backend, return_type=task.return_type)
