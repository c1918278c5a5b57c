"""Worker pools on the cluster: the release has a second pool, `cpu` (e2e/example-values.yaml), that
serves the `cpu` queue, where the example package's `acme.word_count` goes
(``@register_task(queue="cpu")``). The default pool serves only `default`: a cpu task must run on a
`worker-cpu` pod and never on a `worker` pod, and each pool's metrics carry its own queue.
"""

from __future__ import annotations

import pytest

from e2e.support import ADD, Api, Kube, Target, metric_sum, ready_pods, scrape_pod, wait_rollout

pytestmark = pytest.mark.e2e

WORD_COUNT = "acme.word_count"
CPU_COMPONENT = "worker-cpu"


def _logs(kube: Kube, target: Target, component: str) -> dict[str, str]:
    """The worker container's log of every ready pod of one component, by pod name."""
    pods = ready_pods(kube, target, component)
    assert pods, f"no ready {component} pod"
    return {
        pod.metadata.name: kube.core.read_namespaced_pod_log(
            pod.metadata.name, target.namespace, container="worker"
        )
        for pod in pods
    }


def test_each_pool_runs_only_its_own_queue(kube: Kube, target: Target, api: Api) -> None:
    wait_rollout(kube, target, f"{target.fullname}-{CPU_COMPONENT}")
    wait_rollout(kube, target, target.worker)
    cpu_ids = [api.dispatch(WORD_COUNT, f"pool {n} pool {n} queue", top=1) for n in range(6)]
    default_ids = [api.dispatch(ADD, n, 1) for n in range(6)]
    for task_id in cpu_ids:
        result = api.wait_for(task_id)
        assert result["status"] == "success", result
        assert result["queue"] == "cpu", result
        assert result["result"] == [["pool", 2]]
    for n, task_id in enumerate(default_ids):
        result = api.wait_for(task_id)
        assert result["status"] == "success", result
        assert result["queue"] == "default", result
        assert result["result"] == n + 1

    cpu_logs = "\n".join(_logs(kube, target, CPU_COMPONENT).values())
    default_logs = "\n".join(_logs(kube, target, "worker").values())
    for task_id in cpu_ids:
        assert task_id in cpu_logs, f"cpu task {task_id} did not run on the cpu pool"
        assert task_id not in default_logs, f"cpu task {task_id} ran on the default pool"
    for task_id in default_ids:
        assert task_id in default_logs, f"default task {task_id} did not run on the default pool"
        assert task_id not in cpu_logs, f"default task {task_id} ran on the cpu pool"


def _succeeded(kube: Kube, target: Target, component: str, queue: str) -> float:
    """``kiqstack_tasks_succeeded_total`` of one queue, summed over a component's ready pods."""
    return sum(
        metric_sum(
            scrape_pod(kube, target, pod.metadata.name, 9000),
            "kiqstack_tasks_succeeded_total",
            queue=queue,
        )
        for pod in ready_pods(kube, target, component)
    )


def test_each_pools_metrics_carry_its_queue(kube: Kube, target: Target, api: Api) -> None:
    result = api.wait_for(api.dispatch(WORD_COUNT, "metrics by queue", top=1))
    assert result["status"] == "success", result
    assert _succeeded(kube, target, CPU_COMPONENT, "cpu") >= 1
    assert _succeeded(kube, target, CPU_COMPONENT, "default") == 0
    assert _succeeded(kube, target, "worker", "cpu") == 0
