"""What kiqstack puts on the wire: header names, JetStream API subjects and statuses, id rules.

Every process that reads or writes kiqstack's messages (the API, workers, ``dlq list|replay``)
takes these names from here, so a header is spelled in one place. Stream, subject and consumer
*names* are settings (``NATS_STREAM``, ``NATS_SUBJECT``, ...: :mod:`app.config`); the stream and
consumer *configurations* built from them are in :mod:`app.jetstream.topology`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# -- headers of a task message ---------------------------------------------------------------------
#: The task's name, copied from the body so that a message can be routed and listed unparsed.
TASK_NAME_HEADER = "Kiq-Task-Name"
#: The task's queue (:mod:`app.queues`): ``dlq list`` shows it, ``dlq replay`` sends the task back
#: to it. A message without it (sent before queues existed) belongs to ``default``.
QUEUE_HEADER = "Kiq-Queue"
#: JetStream de-duplicates on it within the stream's duplicate window: kiqstack sets the task id.
MSG_ID_HEADER = "Nats-Msg-Id"
#: Which attempt of a task a message carries (1 = the first; a retry carries 2, 3, ...).
ATTEMPT_HEADER = "Kiq-Attempt"
#: The periodic schedule a definition (and every message it generates) belongs to.
SCHEDULE_NAME_HEADER = "Kiq-Schedule"

# -- JetStream message schedules (a definition in the task stream; nats-server >= 2.12) ------------
#: The pattern of a definition: ``@at <RFC3339>``, ``@every 5s`` or a 6-field cron expression.
SCHEDULE_HEADER = "Nats-Schedule"
#: The subject a definition publishes its messages to (a subject of the same stream).
SCHEDULE_TARGET_HEADER = "Nats-Schedule-Target"
#: The time zone of a cron definition.
SCHEDULE_TIME_ZONE_HEADER = "Nats-Schedule-Time-Zone"
#: Set by the server on a generated message: the definition's subject, and its next fire time
#: (RFC3339; the literal ``purge`` for a one-shot ``@at``).
SCHEDULER_HEADER = "Nats-Scheduler"
SCHEDULE_NEXT_HEADER = "Nats-Schedule-Next"
SCHEDULE_NEXT_PURGE = "purge"
#: Compare-and-set of a publish: the last sequence stored on the subject (0: none).
EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
#: JetStream's own headers all start with this: they are never copied to another message (a
#: ``Nats-Scheduler`` header re-published makes the server refuse it, or purge a subject).
NATS_HEADER_PREFIX = "Nats-"

# -- headers a dead letter carries (set when a worker moves a message to the dead-letter stream) ---
DEAD_LETTER_REASON_HEADER = "Kiq-Dead-Letter-Reason"
DEAD_LETTER_DETAIL_HEADER = "Kiq-Dead-Letter-Detail"
DEAD_LETTER_DELIVERIES_HEADER = "Kiq-Deliveries"
DEAD_LETTER_SEQUENCE_HEADER = "Kiq-Stream-Sequence"
DEAD_LETTER_TIME_HEADER = "Kiq-Dead-Lettered-At"
DEAD_LETTER_HEADERS = frozenset(
    {
        DEAD_LETTER_REASON_HEADER,
        DEAD_LETTER_DETAIL_HEADER,
        DEAD_LETTER_DELIVERIES_HEADER,
        DEAD_LETTER_SEQUENCE_HEADER,
        DEAD_LETTER_TIME_HEADER,
    }
)
#: Longest ``Kiq-Dead-Letter-Detail`` (characters, whitespace collapsed).
DEAD_LETTER_DETAIL_LIMIT = 512

# -- task ids --------------------------------------------------------------------------------------
#: Task ids end up in log lines, Redis keys and the result notification lines.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# -- JetStream -------------------------------------------------------------------------------------
#: Error code of a publish refused because ``Nats-Expected-Last-Subject-Sequence`` did not match.
ERR_WRONG_LAST_SEQUENCE = 10071

#: Seconds a task stream remembers a ``Nats-Msg-Id`` to drop a duplicate publish.
DUPLICATE_WINDOW_SECONDS = 120.0
#: Bytes of a message beyond its payload and header fields (NATS/1.0 status line, separators).
HEADER_OVERHEAD = 64
#: Header of a status message on a pull request's inbox, and its human-readable companion.
STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
#: Idle heartbeat or flow control: not the end of a pull request.
STATUS_HEARTBEAT = "100"
#: A pull request that expired (408) or found nothing left (404): a healthy end.
STATUS_END_OF_PULL = frozenset({"404", "408"})
#: No responders: the consumer or its stream is gone.
STATUS_NO_RESPONDERS = "503"


def pull_subject(stream: str, consumer: str) -> str:
    """Name the JetStream API subject of a pull request for ``consumer`` of ``stream``.

    :param stream: the stream's name.
    :param consumer: the durable consumer's name.
    :return: ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``.
    """
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def message_size(payload: bytes, headers: Mapping[str, str]) -> int:
    """Bytes a message takes on the wire, as NATS counts it against its ``max_payload``.

    :param payload: the body.
    :param headers: the header fields.
    :return: the size.
    """
    return len(payload) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + HEADER_OVERHEAD


def dead_letter_headers(
    original: Mapping[str, str] | None,
    *,
    reason: str,
    detail: str,
    deliveries: int,
    sequence: int,
    at: float,
) -> dict[str, str]:
    """Build the headers of a dead letter: the original ones with the dead-letter record in place.

    JetStream's own headers are left out: ``Nats-Msg-Id`` (the dead-letter stream must store every
    copy) and the schedule headers of a message a schedule generated (``Nats-Scheduler`` and
    ``Nats-Schedule-Next``, which the server would refuse or act on); so are the dead-letter
    headers of an earlier life of the message.

    :param original: the headers of the delivery.
    :param reason: short reason (a metric label).
    :param detail: what exactly was wrong, for people (may be empty).
    :param deliveries: how often the message was delivered.
    :param sequence: its sequence in the task stream.
    :param at: epoch seconds of the move.
    :return: the headers to publish the dead letter with.
    """
    headers = {k: v for k, v in own_headers(original).items() if k not in DEAD_LETTER_HEADERS}
    headers[DEAD_LETTER_REASON_HEADER] = reason
    if detail:
        headers[DEAD_LETTER_DETAIL_HEADER] = " ".join(detail.split())[:DEAD_LETTER_DETAIL_LIMIT]
    headers[DEAD_LETTER_DELIVERIES_HEADER] = str(deliveries)
    headers[DEAD_LETTER_SEQUENCE_HEADER] = str(sequence)
    headers[DEAD_LETTER_TIME_HEADER] = f"{at:.3f}"
    return headers


def replay_headers(
    dead_letter: Mapping[str, str] | None, *, task_id: str, sequence: int
) -> dict[str, str]:
    """Build the headers a replayed dead letter goes back to the task stream with.

    :param dead_letter: the headers of the stored dead letter.
    :param task_id: the task's id.
    :param sequence: the dead letter's sequence (a second replay of it is a duplicate).
    :return: the original headers, without the dead-letter record and JetStream's own headers,
        with a fresh message id.
    """
    headers = {k: v for k, v in own_headers(dead_letter).items() if k not in DEAD_LETTER_HEADERS}
    headers[MSG_ID_HEADER] = f"{task_id}:replay:{sequence}"
    return headers


def own_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Drop JetStream's own headers (``Nats-*``) from a message's headers, keeping the rest.

    A copy of a message (dead letter, replay, retry) must never carry them: a ``Nats-Scheduler``
    header makes the server refuse the publish, or purge the subject it names.

    :param headers: the headers of a message.
    :return: a new dict without the ``Nats-*`` headers.
    """
    return {
        k: v
        for k, v in (headers or {}).items()
        if not k.lower().startswith(NATS_HEADER_PREFIX.lower())
    }
