"""Workers going away in the middle of a burst lose no task.

Graceful deletion and `rollout restart` exercise the worker's drain on SIGTERM; a forced deletion
(grace period 0) exercises JetStream redelivery of unacknowledged tasks after ACK_WAIT_SECONDS
(20 s in e2e/values.yaml).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from e2e.support import SLEEP, Api, Kube, Target, ready_pods, rollout_restart, wait_rollout

pytestmark = pytest.mark.e2e

BURST = 240
TASK_SECONDS = 1.0


def _burst_with_disruption(
    api: Api, kube: Kube, target: Target, disrupt: Callable[[], None]
) -> None:
    """Dispatch a burst, disrupt the workers once some tasks finished, then require every task."""
    task_ids = api.dispatch_many((SLEEP, (TASK_SECONDS,)) for _ in range(BURST))
    disrupted = False

    def on_round(done: int) -> None:
        nonlocal disrupted
        # Mid-burst: the first tasks are done, most are still queued or running.
        if not disrupted and done >= 16:
            disrupt()
            disrupted = True

    results = api.wait_all(task_ids, timeout=600, on_round=on_round)
    assert disrupted, "the burst finished before the disruption could happen"
    lost = [t for t in task_ids if results[t]["status"] != "success"]
    assert not lost, (
        f"{len(lost)} of {BURST} tasks did not succeed: {[results[t] for t in lost[:3]]}"
    )
    assert all(results[t]["result"] >= TASK_SECONDS - 0.05 for t in task_ids)


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


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "grace_period",
    [pytest.param(None, id="graceful"), pytest.param(0, id="forced")],
)
def test_worker_pod_deleted_mid_burst_loses_nothing(
    api: Api, kube: Kube, target: Target, grace_period: int | None
) -> None:
    workers = ready_pods(kube, target, "worker")
    assert len(workers) >= 2, "needs two ready workers (e2e/values.yaml: minReplicas 2)"
    victim = workers[0].metadata.name

    def delete_one_worker() -> None:
        kube.core.delete_namespaced_pod(victim, target.namespace, grace_period_seconds=grace_period)

    _burst_with_disruption(api, kube, target, delete_one_worker)
    _wait_for_replacement(kube, target, victim, want=len(workers))


@pytest.mark.timeout(900)
def test_rollout_restart_of_workers_mid_burst_loses_nothing(
    api: Api, kube: Kube, target: Target
) -> None:
    before = {p.metadata.uid for p in ready_pods(kube, target, "worker")}
    assert before, "no ready worker pods"

    _burst_with_disruption(api, kube, target, lambda: rollout_restart(kube, target, target.worker))

    wait_rollout(kube, target, target.worker)
    after = {p.metadata.uid for p in ready_pods(kube, target, "worker")}
    assert after, "no ready worker pods after the restart"
    assert not before & after, "some worker pods were not replaced by the rollout restart"
