"""Workers left idle for minutes, one of them across a NATS restart, then given a long task.

Three stacks run side by side and share one idle period (``SOAK_SECONDS``): a worker with its
server, ``python -m app both``, and a worker whose NATS is restarted a third of the way through.
Then each gets a task longer than three ack waits (so it lives on keep-alive signals). Each task
must run exactly once, with no worker process restarted and no traceback in any log. This is what
an idle worker crashing every 10-60 s (issue 10) looked like to every shorter test: nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from scripts.localinfra import Server, nats_server
from tests.support.logcheck import assert_clean_log, started_ids
from tests.support.stack import Role, Stack, dispatch, metric_value, result_of, unique_names

ACK_WAIT_SECONDS = 5
LONG_TASK_SECONDS = 3 * ACK_WAIT_SECONDS + 1


@dataclass
class Scenario:
    """One stack of the soak: its roles, its long task and how that went."""

    name: str
    stack: Stack
    api: Role
    workers: list[Role]
    nats: Server | None = None
    task_id: str = ""
    result: dict = field(default_factory=dict)

    def logs(self) -> str:
        return self.stack.dump_logs()


def _stack(base: dict[str, str], logdir: Path, name: str) -> Stack:
    logdir.mkdir(parents=True)
    env = {
        **base,
        **unique_names(name.replace("-", "")),
        "ACK_WAIT_SECONDS": str(ACK_WAIT_SECONDS),
        "LOG_LEVEL": "INFO",
    }
    return Stack(env, logdir)


@pytest.fixture(scope="module")
def soak(
    nats: Server, redis: Server, tmp_path_factory: pytest.TempPathFactory, soak_seconds: float
) -> Iterator[dict[str, Scenario]]:
    """Start the three stacks, idle them, restart one NATS mid-way, then run the long tasks."""
    root = tmp_path_factory.mktemp("soak")
    base = {
        "NATS_URL": f"nats://{nats.host}:{nats.port}",
        "REDIS_URL": f"redis://{redis.host}:{redis.port}/0",
    }
    scenarios: dict[str, Scenario] = {}
    own_nats = nats_server(root / "own-nats")
    try:
        stack = _stack(base, root / "worker", "worker")
        scenarios["worker"] = Scenario(
            "worker", stack, api=stack.role("server"), workers=[stack.role("worker")]
        )
        stack = _stack(base, root / "both", "both")
        both = stack.role("both")
        scenarios["both"] = Scenario("both", stack, api=both, workers=[both])
        own_nats.start()
        stack = _stack(
            {**base, "NATS_URL": f"nats://{own_nats.host}:{own_nats.port}"},
            root / "nats-restart",
            "nats-restart",
        )
        scenarios["nats-restart"] = Scenario(
            "nats-restart",
            stack,
            api=stack.role("server"),
            workers=[stack.role("worker")],
            nats=own_nats,
        )
        time.sleep(soak_seconds / 3)
        own_nats.stop()
        time.sleep(3)  # the worker idles disconnected, its pull request lost with the server
        own_nats.start()
        time.sleep(soak_seconds * 2 / 3)
        for scenario in scenarios.values():
            response = dispatch(
                scenario.api.probe_url, "app.tasks.example:sleep_task", LONG_TASK_SECONDS
            )
            assert response.status_code == 202, scenario.logs()
            scenario.task_id = response.json()["task_id"]
        for scenario in scenarios.values():
            scenario.result = result_of(scenario.api.probe_url, scenario.task_id, timeout=120)
        yield scenarios
    finally:
        for scenario in scenarios.values():
            scenario.stack.close()
        own_nats.stop()


SCENARIOS = ["worker", "both", "nats-restart"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_long_task_after_idling_runs_exactly_once(soak: dict[str, Scenario], name: str) -> None:
    scenario = soak[name]
    assert scenario.result["status"] == "success", scenario.logs()
    assert scenario.result["result"] >= LONG_TASK_SECONDS
    starts = [t for worker in scenario.workers for t in started_ids(worker.logs())]
    assert starts.count(scenario.task_id) == 1, scenario.logs()
    for worker in scenario.workers:
        with pytest.raises(KeyError):  # nothing was ever delivered twice
            metric_value(worker.metrics(), "kiqstack_task_redeliveries_total")


@pytest.mark.parametrize("name", SCENARIOS)
def test_no_crash_restart_or_traceback(soak: dict[str, Scenario], name: str) -> None:
    scenario = soak[name]
    for role in scenario.stack.roles:
        logs = role.logs()
        assert_clean_log(logs)
        if role.role in ("worker", "both"):
            assert logs.count("Started process worker-0") == 1, logs  # never restarted
            assert "restarted with pid" not in logs


@pytest.mark.parametrize("name", SCENARIOS)
def test_still_ready_after_the_soak(soak: dict[str, Scenario], name: str) -> None:
    for role in soak[name].stack.roles:
        role.wait_ready(30)
        assert httpx.get(f"{role.probe_url}/livez", timeout=5).status_code == 200


def test_worker_reconnected_after_the_nats_restart(soak: dict[str, Scenario]) -> None:
    worker = soak["nats-restart"].workers[0]
    logs = worker.logs()
    assert "lost the connection to NATS" in logs
    assert "reconnected to NATS" in logs
