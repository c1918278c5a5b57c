"""Schedule definitions in the task stream: their subjects, their headers, their time formats.

A definition is a message on ``NATS_SCHEDULE_SUBJECT.<kind>.<name>`` with a ``Nats-Schedule``
pattern and a ``Nats-Schedule-Target`` (a task subject of the same stream). The server stores it,
survives restarts with it, and publishes a copy (body and ``Kiq-*`` headers) to the target when it
is due: once for ``@at`` (then deletes it), every tick for ``@every`` and cron. A second
definition on the same subject replaces the first (subject rollup); purging the subject cancels it.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta

from app.config import Settings
from app.errors import ScheduleError
from app.wire import (
    MSG_ID_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_NAME_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULE_NEXT_PURGE,
    SCHEDULE_TARGET_HEADER,
    SCHEDULER_HEADER,
)

#: Kinds of definitions (the token after ``NATS_SCHEDULE_SUBJECT``).
DELAYED = "delayed"
RETRY = "retry"
PERIODIC = "periodic"

#: Namespace of the task ids of periodic runs (uuid5 of the definition subject and the tick).
PERIODIC_TASK_ID_NAMESPACE = uuid.UUID("5f0b7c1e-6b4a-4f3e-9d52-1c2a7e9b4d10")


def definition_subject(settings: Settings, kind: str, name: str) -> str:
    """Name the subject of a definition.

    :param settings: kiqstack settings.
    :param kind: :data:`DELAYED`, :data:`RETRY` or :data:`PERIODIC`.
    :param name: the task id (delayed, retry) or the schedule's name (periodic).
    :return: ``NATS_SCHEDULE_SUBJECT.<kind>.<name>``.
    """
    return f"{settings.nats_schedule_subject}.{kind}.{name}"


def rfc3339(when: datetime) -> str:
    """Format an aware time as the RFC3339 UTC timestamp ``@at`` takes (microseconds kept)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def at_headers(
    due: datetime, target: str, msg_id: str, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """Build the headers of a one-shot ``@at`` definition.

    :param due: when it fires (aware).
    :param target: the task subject it publishes to.
    :param msg_id: ``Nats-Msg-Id`` of the definition (a retried publish is a duplicate).
    :param headers: the headers the generated message carries (``Kiq-*``).
    :return: the headers.
    """
    return {
        **(headers or {}),
        SCHEDULE_HEADER: f"@at {rfc3339(due)}",
        SCHEDULE_TARGET_HEADER: target,
        MSG_ID_HEADER: msg_id,
    }


def due_in(seconds: float) -> datetime:
    """Return the aware UTC time ``seconds`` from now."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


def periodic_task_id(headers: dict[str, str] | None) -> str | None:
    """Name the run of a periodic schedule a generated message is (None for any other message).

    ``uuid5(definition subject | next tick)``: unique per tick, the same for a redelivery of it.

    :param headers: the headers of a delivery.
    :return: the task id of this run, or None.
    """
    if not headers:
        return None
    scheduler = headers.get(SCHEDULER_HEADER)
    tick = headers.get(SCHEDULE_NEXT_HEADER)
    if not scheduler or not tick or tick == SCHEDULE_NEXT_PURGE:
        return None
    return uuid.uuid5(PERIODIC_TASK_ID_NAMESPACE, f"{scheduler}|{tick}").hex


#: Labels a periodic run carries: its schedule's name and the schedule's next tick.
SCHEDULE_LABEL = "kiq_schedule"
SCHEDULE_NEXT_LABEL = "kiq_schedule_next"


def periodic_run_body(data: bytes, run_id: str, headers: dict[str, str]) -> bytes:
    """Build the body of one periodic run: the definition's body with the run's own id and labels.

    :param data: the generated message's body (the same for every tick).
    :param run_id: :func:`periodic_task_id` of the message.
    :param headers: its headers.
    :return: the body the worker runs.
    """
    body = json.loads(data)
    body["task_id"] = run_id
    labels = body.setdefault("labels", {})
    labels[SCHEDULE_NEXT_LABEL] = headers.get(SCHEDULE_NEXT_HEADER, "")
    name = headers.get(SCHEDULE_NAME_HEADER)
    if name:
        labels[SCHEDULE_LABEL] = name
    return json.dumps(body, separators=(",", ":")).encode()


#: Labels that delay a dispatch: ``delay`` (seconds from now; the label taskiq's SmartRetry
#: middleware sets too) and ``eta`` (an ISO 8601 time with a time zone, or epoch seconds).
DELAY_LABEL = "delay"
#: An ETA this far in the past still runs (at once); farther is refused as a mistake.
PAST_ETA_TOLERANCE_SECONDS = 300.0
ETA_LABEL = "eta"


def parse_eta(value: object) -> datetime:
    """Read an ETA: an aware ``datetime``, an ISO 8601 text with a time zone, or epoch seconds.

    :raises ScheduleError: on anything else (a time without a time zone included).
    """
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        when = datetime.fromtimestamp(float(value), UTC)
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            try:
                when = datetime.fromtimestamp(float(value), UTC)
            except (ValueError, OverflowError):
                raise ScheduleError(
                    problem=f"eta {value[:64]!r} is not an ISO 8601 time or epoch seconds"
                ) from None
    else:
        raise ScheduleError(problem=f"eta must be a time, not {type(value).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ScheduleError(
            problem=f"eta {when.isoformat()!r} has no time zone (add Z or an offset like +02:00)"
        )
    return when


def due_time(labels: dict[str, object], max_delay: float) -> datetime | None:
    """When a dispatch with these labels is due (None: now, not delayed).

    :param labels: the message's labels (``delay`` or ``eta``).
    :param max_delay: the farthest allowed, in seconds (``MAX_SCHEDULE_DELAY_SECONDS``).
    :return: the aware due time, or None for no delay.
    :raises ScheduleError: on a bad, negative or too far delay or ETA, or both given.
    """
    delay, eta = labels.get(DELAY_LABEL), labels.get(ETA_LABEL)
    if delay is None and eta is None:
        return None
    if delay is not None and eta is not None:
        raise ScheduleError(problem="give either a delay or an eta, not both")
    now = datetime.now(UTC)
    if eta is not None:
        due = parse_eta(eta)
        seconds = (due - now).total_seconds()
        if seconds < -PAST_ETA_TOLERANCE_SECONDS:
            raise ScheduleError(problem=f"eta {due.isoformat()} is in the past")
        if seconds <= 0:
            return None  # due now (clock skew between client and server)
    else:
        try:
            seconds = float(str(delay))
        except ValueError:
            raise ScheduleError(problem=f"delay {str(delay)[:64]!r} is not a number") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ScheduleError(problem=f"delay must be 0 or more seconds, not {delay}")
        if seconds == 0:
            return None
        due = now + timedelta(seconds=seconds)
    if seconds > max_delay:
        raise ScheduleError(
            problem=f"due in {seconds:.0f}s: more than MAX_SCHEDULE_DELAY_SECONDS ({max_delay:g})"
        )
    return due
