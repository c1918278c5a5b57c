"""The worker HPA exists, targets the worker Deployment and reads live metrics from metrics-server
(the worker container's CPU: the chart renders a ContainerResource metric)."""

from __future__ import annotations

import time

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.support import Kube, Target, settled_pods

pytestmark = pytest.mark.e2e


def test_worker_hpa_targets_the_worker_deployment(kube: Kube, target: Target) -> None:
    try:
        hpa = kube.autoscaling.read_namespaced_horizontal_pod_autoscaler(
            target.worker, target.namespace
        )
    except ApiException as exc:
        pytest.fail(
            f"HPA {target.namespace}/{target.worker} not found ({exc.status}); "
            "e2e/values.yaml sets worker.autoscaling.mode=hpa"
        )
    ref = hpa.spec.scale_target_ref
    assert (ref.api_version, ref.kind, ref.name) == ("apps/v1", "Deployment", target.worker)
    assert hpa.spec.min_replicas >= 2, "e2e/values.yaml asks for two workers at least"
    assert hpa.spec.max_replicas >= hpa.spec.min_replicas
    # The chart scales on the worker container's CPU (ContainerResource), not the pod's.
    assert any(
        m.type == "ContainerResource"
        and m.container_resource.name == "cpu"
        and m.container_resource.container == "worker"
        for m in hpa.spec.metrics
    ), hpa.spec.metrics
    # The HPA owns the replica count (the chart renders no `replicas`): right after the install the
    # Deployment has the default 1 until the HPA raises it to minReplicas, whatever the metrics say.
    deadline = time.monotonic() + 120
    while True:
        dep = kube.apps.read_namespaced_deployment(target.worker, target.namespace)
        if hpa.spec.min_replicas <= dep.spec.replicas <= hpa.spec.max_replicas:
            break
        assert time.monotonic() < deadline, (
            f"worker replicas {dep.spec.replicas} outside the HPA's "
            f"{hpa.spec.min_replicas}..{hpa.spec.max_replicas} after 120s"
        )
        time.sleep(3)


@pytest.mark.timeout(400)
def test_metrics_api_reports_worker_pods(kube: Kube, target: Target) -> None:
    """metrics-server answers for the worker pods (kind has no metrics API without it)."""
    workers = {pod.metadata.name for pod in settled_pods(kube, target, "worker")}
    deadline = time.monotonic() + 300
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            listing = kube.custom.list_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", target.namespace, "pods"
            )
            seen = {item["metadata"]["name"] for item in listing["items"]}
        except ApiException as exc:
            if exc.status != 404 and exc.status != 503:
                raise
        if seen & workers:
            return
        time.sleep(5)
    pytest.fail(
        f"metrics.k8s.io reported no worker pod within 300s (saw {sorted(seen)}); "
        "is metrics-server installed?"
    )


@pytest.mark.timeout(400)
def test_worker_hpa_reports_current_metrics(kube: Kube, target: Target) -> None:
    deadline = time.monotonic() + 300
    hpa = None
    while time.monotonic() < deadline:
        hpa = kube.autoscaling.read_namespaced_horizontal_pod_autoscaler(
            target.worker, target.namespace
        )
        current = [
            m
            for m in hpa.status.current_metrics or []
            if m.type == "ContainerResource"
            and m.container_resource.name == "cpu"
            and m.container_resource.container == "worker"
            and m.container_resource.current.average_utilization is not None
        ]
        conditions = {c.type: c.status for c in hpa.status.conditions or []}
        if current and conditions.get("ScalingActive") == "True":
            assert hpa.status.current_replicas >= hpa.spec.min_replicas
            return
        time.sleep(5)
    status = hpa.status if hpa is not None else None
    pytest.fail(f"HPA {target.worker} has no current CPU metric after 300s: {status}")
