"""The scheduler Deployment (``RUN_MODE=scheduler``): on by default, one small pod, probes and
metrics on ``http-metrics``, the same configuration and credentials as the other roles, a PDB with
two replicas (values-ha.yaml), off with ``scheduler.enabled: false``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.chartlib import CHART_DIR, Rendered, container, env_map, render

pytestmark = pytest.mark.chart

NAME = "demo-kiqstack-scheduler"
SELECTOR = {
    "app.kubernetes.io/name": "kiqstack",
    "app.kubernetes.io/instance": "demo",
    "app.kubernetes.io/component": "scheduler",
}


def test_scheduler_by_default(defaults: Rendered) -> None:
    dep = defaults.get("Deployment", NAME)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    c = container(dep)
    assert c["name"] == "scheduler"
    assert env_map(dep)["RUN_MODE"] == {"name": "RUN_MODE", "value": "scheduler"}
    assert "WORKER_QUEUES" not in env_map(dep)  # it runs no tasks
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9000, "protocol": "TCP"}]
    assert c["envFrom"] == [{"configMapRef": {"name": "demo-kiqstack"}}]
    # NATS_URL (and REDIS_URL) like the other roles, from the same Secrets
    server = env_map(defaults.get("Deployment", "demo-kiqstack-server"))
    for name in ("NATS_URL", "KIQSTACK_NATS_USER", "REDIS_URL"):
        assert env_map(dep)[name] == server[name]
    assert c["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"memory": "256Mi"},
    }
    spec = dep["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 30
    [tsc] = spec["topologySpreadConstraints"]
    assert tsc["labelSelector"]["matchLabels"] == SELECTOR
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    worker = defaults.get("Deployment", "demo-kiqstack-worker")
    assert (
        ann["checksum/config"]
        == worker["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    )
    # one replica: no PDB
    assert not defaults.find("PodDisruptionBudget", NAME)
    assert "Scheduler: demo-kiqstack-scheduler (1 replica) dispatches the periodic tasks" in (
        defaults.notes
    )


def test_scheduler_network_policy(defaults: Rendered) -> None:
    np = defaults.get("NetworkPolicy", NAME)
    assert np["spec"]["podSelector"] == {"matchLabels": SELECTOR}
    [rule] = np["spec"]["ingress"]  # the metrics port only: no API
    assert rule["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]


def test_scheduler_ha(rendered: dict[str, Rendered]) -> None:
    r = rendered["scheduler-ha"]
    assert r.get("Deployment", NAME)["spec"]["replicas"] == 2
    pdb = r.get("PodDisruptionBudget", NAME)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    assert "(2 replicas)" in r.notes
    ha = yaml.safe_load((CHART_DIR / "values-ha.yaml").read_text())
    assert ha["scheduler"]["replicas"] == 2


def test_scheduler_off(rendered: dict[str, Rendered]) -> None:
    r = rendered["scheduler-off"]
    assert not [o for o in r.own() if o["metadata"]["name"] == NAME]
    assert "Scheduler: disabled: periodic tasks are never dispatched" in r.notes


def test_scheduler_scrape_and_alert(rendered: dict[str, Rendered]) -> None:
    r = rendered["everything"]
    ann = r.get("Deployment", NAME)["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == "9000"
    r.get("PodMonitor", NAME)
    alerts = [
        x["alert"] for x in r.get("PrometheusRule", "demo-kiqstack")["spec"]["groups"][0]["rules"]
    ]
    assert "KiqstackNoReadyScheduler" in alerts
    r = rendered["scheduler-off"]
    assert not r.find("PodMonitor")


def test_scheduler_name_fits_63_characters(chart: Path) -> None:
    long = "x" * 55
    r = render(chart, {"fullnameOverride": long})
    names = {o["metadata"]["name"] for o in r.own() if o["kind"] == "Deployment"}
    assert f"{long}-server" in names
    scheduler = next(n for n in names if n.endswith("-scheduler"))
    assert len(scheduler) <= 63
