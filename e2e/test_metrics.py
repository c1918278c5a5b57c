"""Server and worker metrics are scrapeable in the cluster; the queue depth follows a burst."""

from __future__ import annotations

import time

import pytest

from e2e.support import (
    ADD,
    SLEEP,
    Api,
    Kube,
    Target,
    metric_names,
    metric_sum,
    ready_pods,
    sampling,
    scrape_pod,
    scrape_service,
    settled_pods,
)

pytestmark = pytest.mark.e2e

# METRICS_PORT (chart `config.metricsPort`): /metrics of both roles, container port `http-metrics`;
# the server's API port `http` serves no /metrics.
WORKER_METRICS_PORT = 9000
SERVER_METRICS_PORT = 9000


def _worker_texts(kube: Kube, target: Target) -> dict[str, str]:
    return {
        pod.metadata.name: scrape_pod(kube, target, pod.metadata.name, WORKER_METRICS_PORT)
        for pod in ready_pods(kube, target, "worker")
    }


def _queue_pending(kube: Kube, target: Target, queue: str = "default") -> float | None:
    """kiqstack_queue_pending{queue} as the workers see it (each reports its queues' consumers)."""
    values = [
        metric_sum(text, "kiqstack_queue_pending", queue=queue)
        for text in _worker_texts(kube, target).values()
        if f'kiqstack_queue_pending{{queue="{queue}"}}' in text
    ]
    return max(values) if values else None


def test_server_metrics_through_the_service(api: Api, kube: Kube, target: Target) -> None:
    servers = settled_pods(kube, target, "server")
    api.wait_for(api.dispatch(ADD, 1, 1))  # at least one dispatch and one status read
    # The Service's metrics port answers (whichever server pod it picks)...
    text = scrape_service(kube, target, target.server, "http-metrics")
    for family in ("kiqstack_http_requests_total", "kiqstack_http_request_duration_seconds"):
        assert f"# TYPE {family} " in text, f"{family} not declared by the server's /metrics"
    # ...and the pod that served the requests above counted them (scrapes of the metrics port
    # are not API requests, so a pod that served none has no samples yet).
    names: set[str] = set()
    for pod in servers:
        names |= metric_names(scrape_pod(kube, target, pod.metadata.name, SERVER_METRICS_PORT))
    for name in (
        "kiqstack_http_requests_total",
        "kiqstack_http_request_duration_seconds_bucket",
    ):
        assert name in names, f"{name} missing from the server pods' /metrics"


def test_server_metrics_count_dispatches(api: Api, kube: Kube, target: Target) -> None:
    pods = settled_pods(kube, target, "server")
    for _ in range(10):
        api.dispatch(ADD, 1, 2)
    total = sum(
        metric_sum(
            scrape_pod(kube, target, pod.metadata.name, SERVER_METRICS_PORT),
            "kiqstack_tasks_dispatched_total",
            task_name=ADD,
        )
        for pod in pods
    )
    assert total >= 10


def test_worker_metrics_on_every_worker_pod(api: Api, kube: Kube, target: Target) -> None:
    settled_pods(kube, target, "worker")
    api.wait_for(api.dispatch(ADD, 2, 2))
    texts = _worker_texts(kube, target)
    assert texts, "no ready worker pods"
    for pod, text in texts.items():
        names = metric_names(text)
        for name in (
            "kiqstack_queue_pending",
            "kiqstack_queue_ack_pending",
            "kiqstack_tasks_in_flight",
        ):
            assert name in names, f"{name} missing from /metrics of worker {pod}"
    succeeded = sum(
        metric_sum(text, "kiqstack_tasks_succeeded_total", task_name=ADD) for text in texts.values()
    )
    assert succeeded >= 1, "no worker counted a succeeded add task"


@pytest.mark.timeout(900)
def test_queue_depth_moves_during_a_burst(api: Api, kube: Kube, target: Target) -> None:
    """Enough 1 s tasks to keep the workers busy for ~20 s: the backlog shows, then drains."""
    texts = _worker_texts(kube, target)
    succeeded_before = sum(
        metric_sum(t, "kiqstack_tasks_succeeded_total", task_name=SLEEP) for t in texts.values()
    )
    burst = 400

    with sampling(lambda: _queue_pending(kube, target), interval=1.0) as pending:
        task_ids = api.dispatch_many((SLEEP, (1.0,)) for _ in range(burst))
        results = api.wait_all(task_ids, timeout=600)
        # The workers refresh the gauge every few seconds; give the drained value time to show.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_queue_pending(kube, target) or 0) > 0:
            time.sleep(2)

    assert all(r["status"] == "success" for r in results.values())
    assert pending, "kiqstack_queue_pending was never readable"
    assert max(pending) > 0, f"the queue depth never rose during a burst of {burst}: {pending}"
    assert _queue_pending(kube, target) == 0, "the queue depth did not return to 0 after the burst"
    # Worker pods may have been replaced by earlier tests, so only compare when they were not.
    texts_after = _worker_texts(kube, target)
    if set(texts_after) == set(texts):
        succeeded_after = sum(
            metric_sum(t, "kiqstack_tasks_succeeded_total", task_name=SLEEP)
            for t in texts_after.values()
        )
        assert succeeded_after - succeeded_before >= burst
