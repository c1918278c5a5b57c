"""Workers going away in the middle of a burst lose no task, and no task runs twice at once.

Graceful deletion and `rollout restart` exercise the worker's drain on SIGTERM; a forced deletion
(grace period 0) exercises JetStream redelivery of unacknowledged tasks after ACK_WAIT_SECONDS
(20 s here: the `ack_wait_seconds` fixture). Every test also follows the worker pods' logs and
counts the executions of each task id: a task may run again only once its earlier run is gone
(finished, or its pod killed), never while that run is still alive on another worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from e2e.support import (
    SLEEP,
    Api,
    Execution,
    Kube,
    Target,
    WorkerLogs,
    concurrent_runs,
    ready_pods,
    rollout_restart,
    settled_pods,
    wait_rollout,
)

pytestmark = pytest.mark.e2e

BURST = 240
TASK_SECONDS = 1.0
# The case that once ran 5 of 24 tasks on both workers about 0.7 s apart: two workers,
# ACK_WAIT_SECONDS 20 and 24 tasks that each run as long as ACK_WAIT_SECONDS.
LONG_TASKS = 24


def _check_executions(runs: dict[str, list[Execution]], task_ids: list[str]) -> None:
    """Every task's start was seen in the logs, and no task ran twice at the same time."""
    unseen = [t for t in task_ids if not runs[t]]
    assert not unseen, (
        f"{len(unseen)} tasks never logged 'task started' on a followed worker, e.g. {unseen[:3]}"
    )
    overlapping = concurrent_runs(runs)
    assert not overlapping, (
        f"{len(overlapping)} tasks ran twice while their first run was alive:\n"
        + "\n".join(overlapping[:10])
    )


def _burst_with_disruption(
    api: Api, kube: Kube, target: Target, disrupt: Callable[[], None]
) -> dict[str, list[Execution]]:
    """Dispatch a burst, disrupt the workers once some tasks finished, then require every task."""
    disrupted = False

    def on_round(done: int) -> None:
        nonlocal disrupted
        # Mid-burst: the first tasks are done, most are still queued or running.
        if not disrupted and done >= 16:
            disrupt()
            disrupted = True

    with WorkerLogs(kube, target) as logs:
        task_ids = api.dispatch_many((SLEEP, (TASK_SECONDS,)) for _ in range(BURST))
        results = api.wait_all(task_ids, timeout=600, on_round=on_round)
    assert disrupted, "the burst finished before the disruption could happen"
    lost = [t for t in task_ids if results[t]["status"] != "success"]
    assert not lost, (
        f"{len(lost)} of {BURST} tasks did not succeed: {[results[t] for t in lost[:3]]}"
    )
    assert all(results[t]["result"] >= TASK_SECONDS - 0.05 for t in task_ids)
    runs = logs.executions(task_ids)
    _check_executions(runs, task_ids)
    return runs


def _wait_for_replacement(
    kube: Kube, target: Target, gone: str, want: int, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = {p.metadata.name for p in ready_pods(kube, target, "worker")}
        if gone not in names and len(names) >= want:
            return
        time.sleep(2)
    pytest.fail(f"worker pod {gone} was not replaced within {timeout}s")


@pytest.mark.timeout(600)
def test_tasks_as_long_as_ack_wait_run_once(
    api: Api, kube: Kube, target: Target, ack_wait_seconds: float
) -> None:
    """No disruption: running tasks are kept alive, so each one runs exactly once."""
    settled_pods(kube, target, "worker", minimum=2)  # needs two ready workers
    with WorkerLogs(kube, target) as logs:
        task_ids = api.dispatch_many((SLEEP, (ack_wait_seconds,)) for _ in range(LONG_TASKS))
        results = api.wait_all(task_ids, timeout=300)
    failed = {t: r for t, r in results.items() if r["status"] != "success"}
    assert not failed, f"{len(failed)} tasks failed, e.g. {list(failed.items())[:3]}"
    runs = logs.executions(task_ids)
    _check_executions(runs, task_ids)
    again = {t: [f"{r.pod}@{r.started:.3f}" for r in rs] for t, rs in runs.items() if len(rs) > 1}
    assert not again, f"{len(again)} of {LONG_TASKS} tasks ran more than once: {again}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "grace_period",
    [pytest.param(None, id="graceful"), pytest.param(0, id="forced")],
)
def test_worker_pod_deleted_mid_burst_loses_nothing(
    api: Api, kube: Kube, target: Target, ack_wait_seconds: float, grace_period: int | None
) -> None:
    # needs two ready workers (worker.autoscaling.minReplicas: 2)
    workers = settled_pods(kube, target, "worker", minimum=2)
    victim = workers[0].metadata.name

    def delete_one_worker() -> None:
        kube.core.delete_namespaced_pod(victim, target.namespace, grace_period_seconds=grace_period)

    runs = _burst_with_disruption(api, kube, target, delete_one_worker)
    if grace_period is None:
        # A graceful stop lets the victim finish what it runs: nothing needs to run again.
        again = [t for t, rs in runs.items() if len(rs) > 1]
        assert not again, f"{len(again)} tasks ran again after a graceful stop, e.g. {again[:3]}"
    _wait_for_replacement(kube, target, victim, want=len(workers))


@pytest.mark.timeout(900)
def test_rollout_restart_of_workers_mid_burst_loses_nothing(
    api: Api, kube: Kube, target: Target, ack_wait_seconds: float
) -> None:
    before = {p.metadata.uid for p in settled_pods(kube, target, "worker")}

    _burst_with_disruption(api, kube, target, lambda: rollout_restart(kube, target, target.worker))

    wait_rollout(kube, target, target.worker)
    after = {p.metadata.uid for p in ready_pods(kube, target, "worker")}
    assert after, "no ready worker pods after the restart"
    assert not before & after, "some worker pods were not replaced by the rollout restart"
