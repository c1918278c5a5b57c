"""The chart rendered across a matrix of values; every object validated for Kubernetes 1.33/1.36."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chartlib import (
    ALL_APIS,
    CHART_DIR,
    KEDA_API,
    Rendered,
    container,
    env_map,
    render,
    validate_objects,
    validate_schema,
)
from tests.chart.scenarios import SCENARIOS

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_validates(rendered: dict[str, Rendered], scenario: str) -> None:
    assert validate_objects(rendered[scenario]) > 0


def _fullname(release: str) -> str:
    return release if "kiqstack" in release else f"{release}-kiqstack"


def _url_host(r: Rendered, deployment: str, name: str) -> str:
    """Host:port of NATS_URL/REDIS_URL in a Deployment's env (after the credentials)."""
    value: str = env_map(r.get("Deployment", deployment))[name]["value"]
    return value.rsplit("@", 1)[1].removesuffix("/0")


def test_release_name_rules(rendered: dict[str, Rendered]) -> None:
    r = rendered["release-contains-nats"]
    assert _url_host(r, "my-nats-kiqstack-worker", "NATS_URL") == "my-nats:4222"
    assert _url_host(r, "my-nats-kiqstack-worker", "REDIS_URL") == "my-nats-valkey:6379"
    r.get("Service", "my-nats")
    r.get("Service", "my-nats-headless")
    r = rendered["release-contains-kiqstack"]
    r.get("Deployment", "kiqstack-server")
    r.get("Service", "kiqstack-server")  # what skaffold port-forwards and the e2e expects
    assert _url_host(r, "kiqstack-server", "NATS_URL") == "kiqstack-nats:4222"
    r = rendered["release-contains-valkey"]
    assert _url_host(r, "valkey-prod-kiqstack-server", "REDIS_URL") == "valkey-prod:6379"
    r.get("Service", "valkey-prod")
    np = r.get("NetworkPolicy", "valkey-prod-kiqstack-valkey")
    assert np["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "valkey",
        "app.kubernetes.io/instance": "valkey-prod",
    }
    r = rendered["overrides"]
    r.get("Deployment", "tasks-worker")
    assert _url_host(r, "tasks-worker", "NATS_URL") == "queue:4222"
    r.get("Service", "queue")


@pytest.mark.parametrize("scenario", ["defaults", "hpa-memory", "keda", "none", "external-secrets"])
def test_one_autoscaler_targets_worker(rendered: dict[str, Rendered], scenario: str) -> None:
    r = rendered[scenario]
    mode = SCENARIOS[scenario][0].get("worker", {}).get("autoscaling", {}).get("mode", "hpa")
    worker = r.get("Deployment", "demo-kiqstack-worker")
    hpas, scaled = r.find("HorizontalPodAutoscaler"), r.find("ScaledObject")
    if mode == "none":
        assert not hpas
        assert not scaled
        assert worker["spec"]["replicas"] == 3
        return
    assert "replicas" not in worker["spec"]
    [scaler] = hpas if mode == "hpa" else scaled
    assert len(hpas) + len(scaled) == 1
    assert scaler["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaler["spec"]["scaleTargetRef"]["kind"] == "Deployment"


def test_hpa_memory_metric(rendered: dict[str, Rendered]) -> None:
    hpa = rendered["hpa-memory"].get("HorizontalPodAutoscaler", "demo-kiqstack-worker")
    names = [m["containerResource"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["cpu", "memory"]


def test_keda_trigger_matches_worker_settings(rendered: dict[str, Rendered]) -> None:
    r = rendered["keda"]
    so = r.get("ScaledObject", "demo-kiqstack-worker")
    data = r.get("ConfigMap", "demo-kiqstack")["data"]
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["maxReplicaCount"] == 10
    js = next(t for t in so["spec"]["triggers"] if t["type"] == "nats-jetstream")
    assert js["metadata"]["stream"] == data["NATS_STREAM"] == "kiqstack_tasks"
    assert js["metadata"]["consumer"] == data["NATS_CONSUMER"] == "kiqstack_workers"
    assert (
        js["metadata"]["natsServerMonitoringEndpoint"]
        == "demo-nats-headless.apps.svc.cluster.local:8222"
    )
    assert js["metadata"]["account"] == "$G"
    r.get("Service", "demo-nats-headless")
    cpu = next(t for t in so["spec"]["triggers"] if t["type"] == "cpu")
    assert cpu["metadata"] == {"value": "70", "containerName": "worker"}
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "Watch the workers scale: kubectl -n apps get scaledobject,hpa" in r.notes


def test_keda_with_renamed_stream(chart: Path) -> None:
    values = {
        "config": {"nats": {"stream": "jobs", "consumer": "jobrunners"}},
        "worker": {"autoscaling": {"mode": "keda"}},
    }
    r = render(chart, values, api_versions=[KEDA_API])
    js = r.get("ScaledObject", "demo-kiqstack-worker")["spec"]["triggers"][0]["metadata"]
    assert (js["stream"], js["consumer"]) == ("jobs", "jobrunners")
    data = r.get("ConfigMap", "demo-kiqstack")["data"]
    assert (data["NATS_STREAM"], data["NATS_CONSUMER"]) == ("jobs", "jobrunners")


def test_external_urls_in_secret(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-urls"]
    assert not [o for o in r.objects if "/charts/" in o["_source"]]  # no subchart objects
    data = r.get("ConfigMap", "demo-kiqstack")["data"]
    assert "NATS_URL" not in data
    assert "REDIS_URL" not in data
    secret = r.get("Secret", "demo-kiqstack")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded.pop("checksum-salt")
    assert decoded == {
        "NATS_URL": "nats://user:pw@nats.messaging:4222",
        "REDIS_URL": "rediss://:pw@redis.cache:6380/1",
    }
    assert not r.find("Secret", "demo-nats-auth")
    assert not r.find("Secret", "demo-valkey-users")
    for component in ("server", "worker"):
        dep = r.get("Deployment", f"demo-kiqstack-{component}")
        # one key at a time: the salt is not exported into the environment
        assert container(dep)["envFrom"] == [{"configMapRef": {"name": "demo-kiqstack"}}]
        env = env_map(dep)
        for name in ("NATS_URL", "REDIS_URL"):
            ref = {"name": "demo-kiqstack", "key": name}
            assert env[name]["valueFrom"]["secretKeyRef"] == ref


def test_external_existing_secrets(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-secrets"]
    assert not r.find("Secret")
    for component in ("server", "worker"):
        env = env_map(r.get("Deployment", f"demo-kiqstack-{component}"))
        assert env["NATS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "nats-conn",
            "key": "NATS_URL",
        }
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-conn", "key": "url"}
        assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "api-token",
            "key": "API_TOKEN",
        }
    so = r.get("ScaledObject", "demo-kiqstack-worker")
    assert (
        so["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        == "nats.messaging:8222"
    )
    pod = r.get("Pod", "demo-kiqstack-test-task-roundtrip")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "api-token",
        "key": "API_TOKEN",
    }


def test_api_token_secret_used_by_test_pod(rendered: dict[str, Rendered]) -> None:
    r = rendered["everything"]
    secret = r.get("Secret", "demo-kiqstack")
    assert base64.b64decode(secret["data"]["API_TOKEN"]).decode() == "s3cret"
    pod = r.get("Pod", "demo-kiqstack-test-task-roundtrip")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "demo-kiqstack",
        "key": "API_TOKEN",
    }
    assert "Authorization: Bearer $TOKEN" in r.notes


def test_valkey_auth_builds_url_from_password(rendered: dict[str, Rendered]) -> None:
    r = rendered["valkey-auth"]
    assert "REDIS_URL" not in r.get("ConfigMap", "demo-kiqstack")["data"]
    entries = container(r.get("Deployment", "demo-kiqstack-worker"))["env"]
    names = [e["name"] for e in entries]
    # $(VAR) needs the order
    assert names.index("KIQSTACK_REDIS_PASSWORD") < names.index("REDIS_URL")
    env = env_map(r.get("Deployment", "demo-kiqstack-worker"))
    assert env["KIQSTACK_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "demo-users",
        "key": "pw",
    }
    assert (
        env["REDIS_URL"]["value"] == "redis://default:$(KIQSTACK_REDIS_PASSWORD)@demo-valkey:6379/0"
    )
    # a Secret of the user's: kiqstack does not create it
    assert not r.find("Secret", "demo-users")
    assert not r.find("Secret", "demo-valkey-users")


def test_ingress(rendered: dict[str, Rendered]) -> None:
    ing = rendered["everything"].get("Ingress", "demo-kiqstack-server")
    assert ing["spec"]["ingressClassName"] == "nginx"
    [rule] = ing["spec"]["rules"]
    assert rule["host"] == "kiqstack.local"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "demo-kiqstack-server", "port": {"name": "http"}}
    assert ing["spec"]["tls"] == [{"secretName": "tls", "hosts": ["kiqstack.local"]}]


def test_monitors(rendered: dict[str, Rendered]) -> None:
    r = rendered["everything"]
    sm = r.get("ServiceMonitor", "demo-kiqstack-server")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "http-metrics"
    svc = r.get("Service", "demo-kiqstack-server")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    pm = r.get("PodMonitor", "demo-kiqstack-worker")
    assert pm["spec"]["podMetricsEndpoints"][0] == {
        "port": "http-metrics",
        "path": "/metrics",
        "interval": "30s",
    }
    worker = r.get("Deployment", "demo-kiqstack-worker")
    assert pm["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    for component in ("server", "worker"):  # both serve /metrics on METRICS_PORT
        dep = r.get("Deployment", f"demo-kiqstack-{component}")
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == "9000"
        assert ann["prometheus.io/path"] == "/metrics"


def test_prometheus_rule_alerts(rendered: dict[str, Rendered]) -> None:
    rule = rendered["everything"].get("PrometheusRule", "demo-kiqstack")
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert {
        "KiqstackQueueBacklogGrowing",
        "KiqstackTaskFailureRatioHigh",
        "KiqstackNoReadyWorkers",
        "KiqstackTaskRedeliveries",
    } <= set(rules)
    assert "kiqstack_queue_pending" in rules["KiqstackQueueBacklogGrowing"]["expr"]
    failure = rules["KiqstackTaskFailureRatioHigh"]["expr"]
    assert "kiqstack_tasks_failed_total" in failure
    assert "kiqstack_tasks_received_total" in failure
    assert 'deployment="demo-kiqstack-worker"' in rules["KiqstackNoReadyWorkers"]["expr"]
    assert "kube_deployment_status_replicas_available" in rules["KiqstackNoReadyWorkers"]["expr"]
    assert "kiqstack_task_redeliveries_total" in rules["KiqstackTaskRedeliveries"]["expr"]
    for alert in rules.values():
        assert 'namespace="apps"' in alert["expr"]
        assert "{{ $value" not in alert["annotations"]["summary"]
    assert "{{ $value }}" in rules["KiqstackQueueBacklogGrowing"]["annotations"]["description"]


def test_grafana_dashboard(rendered: dict[str, Rendered]) -> None:
    import json

    cm = rendered["everything"].get("ConfigMap", "demo-kiqstack-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["kiqstack.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in (
        "kiqstack_queue_pending",
        "kiqstack_tasks_failed_total",
        "kiqstack_task_duration_seconds_bucket",
    ):
        assert metric in exprs


def test_components_can_be_disabled(rendered: dict[str, Rendered]) -> None:
    r = rendered["server-only"]
    assert not r.find("Deployment", "demo-kiqstack-worker")
    assert not r.find("HorizontalPodAutoscaler")
    assert not r.find("Pod", "demo-kiqstack-test-task-roundtrip")
    r.get("Pod", "demo-kiqstack-test-readyz")
    r = rendered["worker-only"]
    assert not r.find("Deployment", "demo-kiqstack-server")
    assert not r.find("Service", "demo-kiqstack-server")
    # only the test that NATS and Valkey refuse anonymous clients (it needs no API)
    assert [o["metadata"]["name"] for o in r.own() if o["kind"] == "Pod"] == [
        "demo-kiqstack-test-auth-required"
    ]


def test_dev_overrides(rendered: dict[str, Rendered]) -> None:
    r = rendered["dev-overrides"]
    assert r.get("ConfigMap", "demo-kiqstack")["data"]["RELOAD"] == "true"
    for component in ("server", "worker"):
        sc = container(r.get("Deployment", f"demo-kiqstack-{component}"))["securityContext"]
        assert sc["readOnlyRootFilesystem"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}  # the rest of the defaults stays


def test_per_component_security_override(chart: Path) -> None:
    r = render(chart, {"worker": {"securityContext": {"readOnlyRootFilesystem": False}}})
    assert (
        container(r.get("Deployment", "demo-kiqstack-worker"))["securityContext"][
            "readOnlyRootFilesystem"
        ]
        is False
    )
    assert (
        container(r.get("Deployment", "demo-kiqstack-server"))["securityContext"][
            "readOnlyRootFilesystem"
        ]
        is True
    )


def test_pdbs(chart: Path, rendered: dict[str, Rendered]) -> None:
    assert not rendered["defaults"].find("PodDisruptionBudget", "demo-kiqstack-worker")
    r = render(chart, {"server": {"replicas": 1}, "worker": {"autoscaling": {"minReplicas": 2}}})
    assert not r.find("PodDisruptionBudget", "demo-kiqstack-server")
    pdb = r.get("PodDisruptionBudget", "demo-kiqstack-worker")
    assert pdb["spec"]["maxUnavailable"] == 1
    worker = r.get("Deployment", "demo-kiqstack-worker")
    assert pdb["spec"]["selector"] == worker["spec"]["selector"]
    r = render(chart, {"worker": {"autoscaling": {"mode": "none"}, "replicas": 3}})
    r.get("PodDisruptionBudget", "demo-kiqstack-worker")


VALUES_FILES = sorted(
    [
        *CHART_DIR.glob("values-*.yaml"),
        *(CHART_DIR / "ci").glob("*.yaml"),
        *(CHART_DIR.parent / "e2e").glob("values*.yaml"),
    ]
)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: str(p.relative_to(CHART_DIR.parent)))
def test_values_files_render(chart: Path, path: Any) -> None:
    values = yaml.safe_load(path.read_text()) or {}
    validate_schema(chart, values)
    r = render(chart, values, name="kiqstack", api_versions=ALL_APIS)
    assert validate_objects(r) > 0
    r.get("Service", "kiqstack-server")
