"""The scheduler role against real NATS and Redis: exactly one run per tick with two schedulers."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import redis as redis_sync

from tests.support.stack import Stack, metric_value, poll

MODULES = "app.tasks.example,tests.support.periodic_tasks"
TICKS = 30


def created(page: str) -> float:
    """Definitions this scheduler created (0 when it created none)."""
    try:
        return metric_value(page, "kiqstack_schedule_writes_total", action="created")
    except KeyError:
        return 0.0


def test_two_schedulers_one_run_per_tick(stack: Stack, env: dict[str, Any], redis_url: str) -> None:
    schedulers = [stack.role("scheduler", TASK_MODULES=MODULES) for _ in range(2)]
    stack.role("worker", TASK_MODULES=MODULES)
    redis = redis_sync.Redis.from_url(redis_url)
    key = f"ticks:{env['NATS_STREAM']}"
    poll(
        lambda: True if redis.llen(key) >= TICKS + 1 else None,
        TICKS + 60,
        lambda: f"only {redis.llen(key)} runs",
    )
    runs = [json.loads(raw) for raw in redis.lrange(key, 0, TICKS)]
    # Sorted: two runs may finish in another order than they started.
    ticks = sorted(datetime.fromisoformat(run["next"].replace("Z", "+00:00")) for run in runs)
    # 31 consecutive runs, one per tick: TICKS seconds with neither a doubled nor a lost tick.
    assert len({run["task_id"] for run in runs}) == TICKS + 1
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    assert steps == [timedelta(seconds=1)] * TICKS, runs
    # One definition written by one of them; both are ready and report the schedule.
    pages = [httpx.get(f"{s.probe_url}/metrics", timeout=5).text for s in schedulers]
    assert sum(created(page) for page in pages) == 1
    assert all(metric_value(p, "kiqstack_schedules") == 1 for p in pages)
    for scheduler in schedulers:
        assert httpx.get(f"{scheduler.probe_url}/readyz", timeout=5).status_code == 200
