"""Periodic schedules in memory: declarations, the reconciler, the runs' own task ids."""

from __future__ import annotations

import asyncio

import pytest

from app.broker import KiqBroker
from app.config import RunMode, Settings
from app.errors import ScheduleError
from app.lifecycle.definitions import PERIODIC, definition_subject, periodic_task_id
from app.lifecycle.periodic import cron_pattern, make_schedule, periodic, schedules_of
from app.scheduler import Reconciler
from app.wire import SCHEDULE_HEADER, SCHEDULE_TIME_ZONE_HEADER
from tests.support.memory import MemoryTransport, memory_broker
from tests.support.worker import InProcessWorker


def test_declarations_are_checked() -> None:
    assert make_schedule("t", every=60).pattern == "@every 60s"
    assert cron_pattern("30 9 * * mon-fri") == "0 30 9 * * mon-fri"
    berlin = make_schedule("a:b", cron="0 0 9 * * *", tz="Europe/Berlin", name="morning")
    assert (berlin.name, berlin.tz) == ("morning", "Europe/Berlin")
    assert make_schedule("a:b", every=5).name.startswith("a_b-")
    for bad, match in (
        ({}, "exactly one"),
        ({"every": 1, "cron": "* * * * *"}, "exactly one"),
        ({"every": 0.5}, "whole seconds"),
        ({"every": 10, "tz": "UTC"}, "cron= only"),
        ({"cron": "* * *"}, "5 fields"),
        ({"cron": "* * * * *", "tz": "Mars/Base"}, "time zone"),
        ({"every": 1, "name": "a b"}, "schedule name"),
    ):
        with pytest.raises(ScheduleError, match=match):
            make_schedule("t", **bad)  # type: ignore[arg-type]


def test_periodic_run_ids() -> None:
    first = {"Nats-Scheduler": "s.periodic.x", "Nats-Schedule-Next": "2030-01-01T00:00:01Z"}
    second = {**first, "Nats-Schedule-Next": "2030-01-01T00:00:02Z"}
    assert periodic_task_id(first) == periodic_task_id(dict(first))
    assert periodic_task_id(first) != periodic_task_id(second)
    assert periodic_task_id({**first, "Nats-Schedule-Next": "purge"}) is None
    assert periodic_task_id({}) is None


async def test_reconciler_writes_only_what_is_missing_or_different(
    broker: KiqBroker, transport: MemoryTransport
) -> None:
    async def beat() -> str:
        return "beat"

    task = broker.register_task(beat, task_name="t:beat")
    periodic(every=5, name="beat")(task)
    await broker.startup()
    reconciler = Reconciler(broker)
    subject = definition_subject(broker.settings, PERIODIC, "beat")
    assert await reconciler.reconcile(delete=True) == 1
    first = transport.definitions[subject]
    assert first.headers[SCHEDULE_HEADER] == "@every 5s"
    assert await reconciler.reconcile(delete=True) == 0  # unchanged: never re-written
    assert transport.definitions[subject] is first
    schedules_of(broker)["beat"] = make_schedule(
        "t:beat", cron="0 0 9 * * *", tz="Europe/Berlin", name="beat"
    )
    assert await reconciler.reconcile(delete=False) == 1
    assert transport.definitions[subject].headers[SCHEDULE_TIME_ZONE_HEADER] == "Europe/Berlin"
    stale = definition_subject(broker.settings, PERIODIC, "gone")
    transport.definitions[stale] = first
    assert await reconciler.reconcile(delete=False) == 0
    assert await reconciler.reconcile(delete=True) == 1
    assert stale not in transport.definitions
    await broker.shutdown()


async def test_a_lost_race_is_no_error(broker: KiqBroker, transport: MemoryTransport) -> None:
    async def beat() -> None:
        return None

    periodic(every=1, name="race")(broker.register_task(beat, task_name="t:race"))
    await broker.startup()
    one, two = Reconciler(broker), Reconciler(broker)
    original = transport.last_message

    async def stale(subject: str):  # type: ignore[no-untyped-def]
        return None  # as if the other replica had not written yet

    assert await one.reconcile(delete=False) == 1
    transport.last_message = stale  # type: ignore[method-assign]
    assert await two.reconcile(delete=False) == 0  # CAS refused: the other one won
    transport.last_message = original  # type: ignore[method-assign]
    await broker.shutdown()


async def test_each_tick_runs_with_its_own_id(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker
) -> None:
    periodic(every=1, name="echo", args=("tick",))(broker.find_task("kiqstack.echo"))  # type: ignore[arg-type]
    await broker.startup()
    await Reconciler(broker).reconcile(delete=True)
    subject = definition_subject(broker.settings, PERIODIC, "echo")
    ids = []
    for second in (1, 2):
        msg = transport.fire(subject, f"2030-01-01T00:00:0{second}Z")
        run_id = periodic_task_id(msg.headers)
        assert run_id is not None
        assert await broker.results.wait_for_result(run_id, 5)
        assert (await broker.results.get_result(run_id)).return_value == "tick"
        ids.append(run_id)
    assert len(set(ids)) == 2
    assert subject in transport.definitions  # a periodic definition stays
    await broker.shutdown()


async def test_the_server_of_run_mode_both_keeps_the_schedules(settings: Settings) -> None:
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    both = settings.model_copy(update={"run_mode": RunMode.BOTH})
    broker, transport = memory_broker(both, tasks=[])

    async def beat() -> None:
        return None

    periodic(every=7, name="server-beat")(broker.register_task(beat, task_name="t:server-beat"))
    async with LifespanManager(create_app(both, broker=broker)):
        subject = definition_subject(both, PERIODIC, "server-beat")
        for _ in range(100):
            if subject in transport.definitions:
                break
            await asyncio.sleep(0.02)
        assert transport.definitions[subject].headers[SCHEDULE_HEADER] == "@every 7s"
