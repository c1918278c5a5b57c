"""Worker queues: their names, and the subject and durable consumer each one has.

A task names its queue (``@register_task(queue="cpu")``; ``default`` when it names none). Every
queue is a subject of the task stream and a durable pull consumer filtered on exactly that subject,
so JetStream keeps the backlogs apart; a worker serves the queues of ``WORKER_QUEUES``.

The ``default`` queue keeps the names kiqstack used before queues existed (``NATS_SUBJECT`` and
``NATS_CONSUMER``), so tasks queued by an older release are consumed after an upgrade. Queue ``q``
is subject ``<NATS_SUBJECT>.q`` and consumer ``<NATS_CONSUMER>_q``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import InvalidQueueError

#: The queue of a task that names none (and of every message sent before queues existed).
DEFAULT_QUEUE = "default"
#: The taskiq label that names a task's queue (``@register_task(queue=...)``).
QUEUE_LABEL = "queue"
#: What a queue name may be: it becomes a subject token, part of a consumer name, a label value.
QUEUE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def check_queue(name: object) -> str:
    """Check a queue name.

    :param name: the name to check.
    :return: the name.
    :raises InvalidQueueError: naming the rule when it is not a valid queue name.
    """
    if not isinstance(name, str) or not QUEUE_NAME_PATTERN.fullmatch(name):
        raise InvalidQueueError(queue=str(name)[:64])
    return name


def queue_of(labels: Mapping[str, Any] | None) -> str:
    """Name the queue a message or task belongs to, from its labels.

    :param labels: the task's (or message's) taskiq labels.
    :return: the queue (``default`` when the labels name none).
    """
    value = (labels or {}).get(QUEUE_LABEL)
    return DEFAULT_QUEUE if value is None or value == "" else str(value)


def queue_subject(base_subject: str, queue: str) -> str:
    """Name the subject of a queue.

    :param base_subject: ``NATS_SUBJECT``.
    :param queue: the queue.
    :return: ``NATS_SUBJECT`` for ``default``, ``<NATS_SUBJECT>.<queue>`` for the others.
    """
    return base_subject if queue == DEFAULT_QUEUE else f"{base_subject}.{queue}"


def queue_consumer(base_consumer: str, queue: str) -> str:
    """Name the durable consumer of a queue.

    :param base_consumer: ``NATS_CONSUMER``.
    :param queue: the queue.
    :return: ``NATS_CONSUMER`` for ``default``, ``<NATS_CONSUMER>_<queue>`` for the others.
    """
    return base_consumer if queue == DEFAULT_QUEUE else f"{base_consumer}_{queue}"


def unique(queues: Iterable[str]) -> list[str]:
    """Drop repeated queue names, keeping the first occurrence's order."""
    return list(dict.fromkeys(queues))
