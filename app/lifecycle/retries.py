"""Retries with backoff: a failed task comes back as a new message, after a delay, same task id.

Opt in per task with labels (taskiq's names where it has them)::

    @register_task(retry_on_error=True, max_retries=3, retry_backoff=2.0, retry_on=(IOError,))

* ``max_retries``: retries after the first attempt (default 3, so at most 4 runs);
* ``retry_backoff``: seconds before the first retry (default 1); it doubles with each retry,
  capped at ``retry_backoff_max`` (default 600), and is drawn at random from half to all of that
  (``retry_jitter``, default True);
* ``retry_on``: only these exception types retry (default: any exception; taskiq's
  ``types_of_exceptions`` label is the same thing and stays in the worker).

A failure with retries left stores no result: the task's status reads ``retrying`` (attempt, last
error), ``wait_result`` keeps waiting, and the worker acks the delivery after it stored an ``@at``
definition of the next attempt on ``NATS_SCHEDULE_SUBJECT.retry.<task_id>`` (``Kiq-Attempt``,
``Nats-Msg-Id: <task_id>:attempt:<n>``). So a retry waits for no ``ACK_WAIT_SECONDS``, is a fresh
message that ``MAX_DELIVER`` does not count against, survives restarts, and can be cancelled.
The last failure is stored as the task's result.
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from app import metrics
from app.config import Settings
from app.errors import TaskCancelledError
from app.lifecycle.definitions import RETRY, at_headers, definition_subject, due_in
from app.wire import ATTEMPT_HEADER, own_headers

logger = logging.getLogger("kiqstack.worker")

#: Label of the body of a retry: the attempt it is (1 = the first run; absent means 1).
ATTEMPT_LABEL = "kiq_attempt"
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_SECONDS = 1.0
DEFAULT_BACKOFF_MAX_SECONDS = 600.0


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class RetryPolicy:
    """How a task retries, read from its labels."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = DEFAULT_BACKOFF_SECONDS
    backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS
    jitter: bool = True

    @classmethod
    def from_labels(cls, labels: dict[str, Any]) -> RetryPolicy | None:
        """Read the policy of a message (None when the task does not retry).

        :param labels: the message's labels.
        :return: the policy, or None without ``retry_on_error``.
        """
        if not _truthy(labels.get("retry_on_error", False)):
            return None
        return cls(
            max_retries=max(0, int(labels.get("max_retries", DEFAULT_MAX_RETRIES))),
            backoff=max(0.0, float(labels.get("retry_backoff", DEFAULT_BACKOFF_SECONDS))),
            backoff_max=max(
                0.0, float(labels.get("retry_backoff_max", DEFAULT_BACKOFF_MAX_SECONDS))
            ),
            jitter=_truthy(labels.get("retry_jitter", True)),
        )

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds before retry number ``retry`` (1 = the first retry).

        :param retry: which retry.
        :param rng: random source of the jitter.
        :return: ``min(backoff_max, backoff * 2 ** (retry - 1))``, times a random factor from 0.5
            to 1 with jitter.
        """
        exponent = min(max(retry - 1, 0), 62)
        capped = min(self.backoff_max, self.backoff * 2.0**exponent)
        if not self.jitter:
            return capped
        return capped * (rng or random).uniform(0.5, 1.0)


def attempt_of(message: TaskiqMessage) -> int:
    """Which attempt a message is (1 for the first run)."""
    try:
        return max(1, int(message.labels.get(ATTEMPT_LABEL, 1)))
    except (TypeError, ValueError):
        return 1


@dataclass(frozen=True)
class RetryPlan:
    """A failed run that will be retried (decided while the task's error is handled)."""

    message: TaskiqMessage
    attempt: int
    max_retries: int
    delay: float
    error_type: str
    error_message: str

    @property
    def next_attempt(self) -> int:
        """The attempt the retry is."""
        return self.attempt + 1


# Set in the asyncio task of the delivery whose run failed with retries left; the broker's ack
# (same asyncio task, after the receiver skipped the result) schedules the retry.
_plan: contextvars.ContextVar[RetryPlan | None] = contextvars.ContextVar(
    "kiqstack_retry_plan", default=None
)


def take_plan() -> RetryPlan | None:
    """Take the retry decided for the current delivery (None when there is none)."""
    plan = _plan.get()
    if plan is not None:
        _plan.set(None)
    return plan


class RetryMiddleware(TaskiqMiddleware):
    """Decides whether a failed run is retried; the retry itself is sent when the run is acked."""

    def __init__(self, rng: random.Random | None = None) -> None:
        """Create the middleware.

        :param rng: random source of the jitter (tests).
        """
        super().__init__()
        self.rng = rng

    def _retries_on(self, message: TaskiqMessage, exception: BaseException) -> bool:
        task = self.broker.find_task(message.task_name)
        types = task.labels.get("types_of_exceptions") if task is not None else None
        if types is None:
            return True
        return isinstance(exception, tuple(types))

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        """Plan a retry when the task retries on this error and has retries left.

        The result is then replaced by ``NoResultError``: taskiq stores nothing, so a caller
        waiting for the result keeps waiting for the final one.
        """
        if isinstance(exception, NoResultError | TaskCancelledError):
            return
        policy = RetryPolicy.from_labels(message.labels)
        if policy is None or not self._retries_on(message, exception):
            return
        attempt = attempt_of(message)
        if attempt > policy.max_retries:
            logger.warning(
                "task %s (%s) failed on attempt %d: no retries left (max_retries=%d)",
                message.task_id,
                message.task_name,
                attempt,
                policy.max_retries,
            )
            return
        _plan.set(
            RetryPlan(
                message=message,
                attempt=attempt,
                max_retries=policy.max_retries,
                delay=policy.delay(attempt, self.rng),
                error_type=type(exception).__name__,
                error_message=str(exception)[:1000],
            )
        )
        result.error = NoResultError()


def retry_body(data: bytes, task_id: str, attempt: int) -> bytes:
    """Build the body of a retry: the original task message with its id and attempt label.

    :param data: the body of the failed delivery.
    :param task_id: the task's id (a periodic run's own id).
    :param attempt: the attempt the retry is.
    :return: the new body.
    """
    body = json.loads(data)
    body["task_id"] = task_id
    labels = body.setdefault("labels", {})
    labels[ATTEMPT_LABEL] = attempt
    types = body.get("labels_types")
    if isinstance(types, dict):
        types.pop(ATTEMPT_LABEL, None)
    return json.dumps(body, separators=(",", ":")).encode()


def retry_message(
    msg: Msg, plan: RetryPlan, settings: Settings
) -> tuple[str, bytes, dict[str, str]]:
    """Build the ``@at`` definition of the next attempt of a failed delivery.

    :param msg: the failed delivery (its subject, the queue, is the target).
    :param plan: the retry decided.
    :param settings: kiqstack settings.
    :return: (definition subject, body, headers).
    """
    task_id = plan.message.task_id
    headers = own_headers(msg.headers)
    headers[ATTEMPT_HEADER] = str(plan.next_attempt)
    headers = at_headers(
        due_in(plan.delay), msg.subject, f"{task_id}:attempt:{plan.next_attempt}", headers
    )
    subject = definition_subject(settings, RETRY, task_id)
    return subject, retry_body(msg.data, task_id, plan.next_attempt), headers


def count_retry(plan: RetryPlan) -> None:
    """Count and log a scheduled retry."""
    metrics.TASK_RETRIES.labels(plan.message.task_name).inc()
    logger.warning(
        "task %s (%s) failed on attempt %d of %d (%s: %s); retry in %.2fs",
        plan.message.task_id,
        plan.message.task_name,
        plan.attempt,
        plan.max_retries + 1,
        plan.error_type,
        plan.error_message,
        plan.delay,
    )
