"""Periodic schedules, declared next to the task; kept in NATS by the scheduler role.

::

    @periodic(every=60)                                        # every minute
    @periodic(cron="0 30 9 * * mon-fri", tz="Europe/Berlin")   # 09:30 on weekdays, Berlin time
    @register_task()
    async def report() -> None: ...

or ``@register_task(schedule=[{"every": 60}, {"cron": "0 9 * * *", "tz": "UTC"}])``.

Each schedule becomes one definition on ``NATS_SCHEDULE_SUBJECT.periodic.<name>``: ``@every <n>s``
or a cron expression (6 fields with seconds; a 5-field one gets ``0`` seconds), with
``Nats-Schedule-Time-Zone`` for cron. The NATS server fires it: exactly one message per tick, also
with several scheduler replicas, and ticks keep coming while no scheduler runs. Each run's task id
is ``uuid5(definition subject | next tick)``, so a redelivered tick keeps its id. Ticks missed while
NATS itself is down are **coalesced into one run** when it is back (the server's policy); an
``@every`` schedule restarts its interval then and whenever its definition changes.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from taskiq import TaskiqMessage
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.labels import prepare_label

from app.errors import ScheduleError
from app.wire import (
    SCHEDULE_HEADER,
    SCHEDULE_NAME_HEADER,
    SCHEDULE_TARGET_HEADER,
    SCHEDULE_TIME_ZONE_HEADER,
    TASK_NAME_HEADER,
)

_TaskT = TypeVar("_TaskT", bound=AsyncTaskiqDecoratedTask[Any, Any])
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Labels that stay in the process (not JSON): never part of a definition.
_LOCAL_LABELS = frozenset({"types_of_exceptions"})
#: Task id of the body of a definition (each run gets its own, see the module docstring).
DEFINITION_TASK_ID = "periodic"


def cron_pattern(cron: str) -> str:
    """Check a cron expression; give it a seconds field when it has five.

    :raises ScheduleError: when it does not have 5 or 6 fields.
    """
    fields = cron.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise ScheduleError(
            problem=f"cron {cron!r}: give 5 fields (minute hour day month weekday) or 6 "
            "(seconds first)"
        )
    return " ".join(fields)


@dataclass(frozen=True)
class Schedule:
    """One periodic schedule of a task."""

    name: str
    task_name: str
    #: ``@every <n>s`` or a 6-field cron expression.
    pattern: str
    tz: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def headers(self, target: str) -> dict[str, str]:
        """Build the headers of the definition (without the compare-and-set header)."""
        headers = {
            SCHEDULE_HEADER: self.pattern,
            SCHEDULE_TARGET_HEADER: target,
            TASK_NAME_HEADER: self.task_name,
            SCHEDULE_NAME_HEADER: self.name,
        }
        if self.tz is not None:
            headers[SCHEDULE_TIME_ZONE_HEADER] = self.tz
        return headers

    def body(self, labels: Mapping[str, Any]) -> bytes:
        """Build the body of the definition: the task message every run starts from.

        :param labels: the task's labels (local ones are left out).
        """
        prepared = {k: prepare_label(v) for k, v in labels.items() if k not in _LOCAL_LABELS}
        message = TaskiqMessage(
            task_id=DEFINITION_TASK_ID,
            task_name=self.task_name,
            labels={k: v[0] for k, v in prepared.items()},
            labels_types={k: v[1] for k, v in prepared.items()},
            args=list(self.args),
            kwargs=dict(self.kwargs),
        )
        return message.model_dump_json().encode()


def make_schedule(
    task_name: str,
    *,
    cron: str | None = None,
    every: float | timedelta | None = None,
    tz: str | None = None,
    name: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Schedule:
    """Check a schedule declaration and describe it.

    :param task_name: the task it runs.
    :param cron: a cron expression (5 or 6 fields; names like ``mon-fri`` are fine).
    :param every: an interval: whole seconds, at least 1.
    :param tz: the time zone of a cron expression (IANA name; the NATS server needs tzdata).
    :param name: the schedule's name (letters, digits, ``-``, ``_``); default: from the task name
        and the pattern.
    :param args: positional arguments of every run.
    :param kwargs: keyword arguments of every run.
    :return: the schedule.
    :raises ScheduleError: naming what is wrong.
    """
    if (cron is None) == (every is None):
        raise ScheduleError(problem=f"{task_name}: give exactly one of cron= and every=")
    if every is not None:
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
        if seconds < 1 or not seconds.is_integer():
            raise ScheduleError(problem=f"{task_name}: every= must be whole seconds, at least 1")
        if tz is not None:
            raise ScheduleError(problem=f"{task_name}: tz= applies to cron= only")
        pattern = f"@every {int(seconds)}s"
    else:
        assert cron is not None  # noqa: S101
        pattern = cron_pattern(cron)
        if tz is not None:
            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ScheduleError(problem=f"{task_name}: unknown time zone {tz!r}") from None
    if name is None:
        digest = hashlib.sha256(f"{pattern}|{tz}|{args}|{kwargs}".encode()).hexdigest()[:8]
        name = f"{re.sub(r'[^A-Za-z0-9_-]', '_', task_name)[:50]}-{digest}"
    if not _NAME.fullmatch(name):
        raise ScheduleError(problem=f"schedule name {name!r}: use 1 to 64 letters, digits, - or _")
    return Schedule(name, task_name, pattern, tz, tuple(args), dict(kwargs or {}))


def schedules_of(broker: Any) -> dict[str, Schedule]:
    """Return the schedules declared on a broker, by name (an empty dict to fill if none)."""
    found: dict[str, Schedule] | None = getattr(broker, "kiqstack_schedules", None)
    if found is None:
        found = {}
        broker.kiqstack_schedules = found
    return found


def periodic(
    *,
    cron: str | None = None,
    every: float | timedelta | None = None,
    tz: str | None = None,
    name: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Callable[[_TaskT], _TaskT]:
    """Declare a periodic schedule of a registered task (put it above ``@register_task``).

    See :func:`make_schedule` for the parameters.

    :return: a decorator returning the task unchanged.
    :raises ScheduleError: on a bad declaration, or a second schedule with the same name.
    """

    def declare(task: _TaskT) -> _TaskT:
        schedule = make_schedule(
            task.task_name, cron=cron, every=every, tz=tz, name=name, args=args, kwargs=kwargs
        )
        declared = schedules_of(task.broker)
        other = declared.get(schedule.name)
        if other is not None and other != schedule:
            raise ScheduleError(problem=f"two schedules are named {schedule.name!r}")
        declared[schedule.name] = schedule
        return task

    return declare
