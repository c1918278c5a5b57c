"""Bad values are refused with a clear message, by values.schema.json or by a template ``fail``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest
from chartlib import KEDA_API, render

pytestmark = pytest.mark.chart

NO_NATS = {"nats": {"enabled": False}}
NO_VALKEY = {"valkey": {"enabled": False}}
EXT_NATS = {"url": "nats://nats:4222"}
EXT_REDIS = {"url": "redis://redis:6379/0"}

# (values, expected error type, fragment of the message)
REFUSED: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "unknown-autoscaling-mode": (
        {"worker": {"autoscaling": {"mode": "vpa"}}},
        helm_python.HelmValuesError,
        "at '/worker/autoscaling/mode': value must be one of 'hpa', 'keda', 'none'",
    ),
    "negative-worker-replicas": (
        {"worker": {"replicas": -1}},
        helm_python.HelmValuesError,
        "at '/worker/replicas': minimum: got -1, want 0",
    ),
    "negative-server-replicas": (
        {"server": {"replicas": -2}},
        helm_python.HelmValuesError,
        "at '/server/replicas'",
    ),
    "negative-min-replicas": (
        {"worker": {"autoscaling": {"minReplicas": -1}}},
        helm_python.HelmValuesError,
        "at '/worker/autoscaling/minReplicas'",
    ),
    "unknown-top-level-key": (
        {"replicaCount": 3},
        helm_python.HelmValuesError,
        "additional properties 'replicaCount' not allowed",
    ),
    "typo-in-own-block": (
        {"worker": {"autoscalling": {}}},
        helm_python.HelmValuesError,
        "additional properties 'autoscalling' not allowed",
    ),
    "bad-log-level": (
        {"config": {"logLevel": "verbose"}},
        helm_python.HelmValuesError,
        "at '/config/logLevel'",
    ),
    "bad-pull-policy": (
        {"image": {"pullPolicy": "Sometimes"}},
        helm_python.HelmValuesError,
        "at '/image/pullPolicy'",
    ),
    "nats-disabled-without-url": (
        {**NO_NATS},
        helm_python.HelmRenderError,
        "nats.enabled=false needs externalNats.url or externalNats.existingSecret",
    ),
    "valkey-disabled-without-url": (
        {**NO_VALKEY},
        helm_python.HelmRenderError,
        "valkey.enabled=false needs externalRedis.url or externalRedis.existingSecret",
    ),
    "nats-url-and-secret": (
        {**NO_NATS, "externalNats": {**EXT_NATS, "existingSecret": "nats"}},
        helm_python.HelmRenderError,
        "set either externalNats.url or externalNats.existingSecret, not both",
    ),
    "redis-url-and-secret": (
        {**NO_VALKEY, "externalRedis": {**EXT_REDIS, "existingSecret": "redis"}},
        helm_python.HelmRenderError,
        "set either externalRedis.url or externalRedis.existingSecret, not both",
    ),
    "external-nats-with-subchart": (
        {"externalNats": EXT_NATS},
        helm_python.HelmRenderError,
        "set nats.enabled=false to use an external NATS",
    ),
    "external-redis-with-subchart": (
        {"externalRedis": EXT_REDIS},
        helm_python.HelmRenderError,
        "set valkey.enabled=false to use an external Redis",
    ),
    "token-and-existing-secret": (
        {"apiToken": "x", "existingSecret": "tok"},
        helm_python.HelmRenderError,
        "set either apiToken or existingSecret",
    ),
    "jetstream-off": (
        {"nats": {"config": {"jetstream": {"enabled": False}}}},
        helm_python.HelmRenderError,
        "nats.config.jetstream.enabled must be true",
    ),
    "hpa-min-zero": (
        {"worker": {"autoscaling": {"minReplicas": 0}}},
        helm_python.HelmRenderError,
        "minReplicas must be at least 1 with mode=hpa",
    ),
    "min-above-max": (
        {"worker": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        helm_python.HelmRenderError,
        "minReplicas (5) must not exceed maxReplicas (2)",
    ),
    "hpa-without-cpu-request": (
        {"worker": {"resources": {"requests": {"cpu": None}}}},
        helm_python.HelmRenderError,
        "workers.default: autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu "
        "(worker.resources or the pool's",
    ),
    "keda-without-crd": (
        {"worker": {"autoscaling": {"mode": "keda"}}},
        helm_python.HelmRenderError,
        "workers.default.autoscaling.mode=keda needs the keda.sh/v1alpha1/ScaledObject API",
    ),
    "servicemonitor-without-crd": (
        {"metrics": {"serviceMonitor": {"enabled": True}}},
        helm_python.HelmRenderError,
        "metrics.serviceMonitor.enabled needs the monitoring.coreos.com/v1/ServiceMonitor API",
    ),
    "grace-below-shutdown-delay": (
        {"server": {"terminationGracePeriodSeconds": 5}},
        helm_python.HelmRenderError,
        "server.terminationGracePeriodSeconds (5) must be greater than config.shutdownDelaySeconds",
    ),
    "ingress-without-token": (
        {"server": {"ingress": {"enabled": True}}},
        helm_python.HelmRenderError,
        "server.ingress.enabled=true publishes the API, but no API token is set (apiToken or "
        "existingSecret): anyone who reaches the Ingress could run tasks. Set apiToken or "
        "existingSecret, or set server.ingress.allowUnauthenticated=true",
    ),
    "external-nats-selector-with-subchart": (
        {"networkPolicy": {"externalNats": {"podSelector": {"matchLabels": {"app": "nats"}}}}},
        helm_python.HelmRenderError,
        "networkPolicy.externalNats.podSelector is for a NATS run outside this chart",
    ),
    "external-redis-selector-with-subchart": (
        {"networkPolicy": {"externalRedis": {"podSelector": {"matchLabels": {"app": "r"}}}}},
        helm_python.HelmRenderError,
        "networkPolicy.externalRedis.podSelector is for a Redis run outside this chart",
    ),
    "bad-task-modules": (
        {"config": {"taskModules": "app.tasks.example; rm -rf /"}},
        helm_python.HelmValuesError,
        "at '/config/taskModules'",
    ),
    "unknown-network-policy-key": (
        {"networkPolicy": {"allowFrom": []}},
        helm_python.HelmValuesError,
        "additional properties 'allowFrom' not allowed",
    ),
    "nothing-to-deploy": (
        {"server": {"enabled": False}, "worker": {"enabled": False}},
        helm_python.HelmRenderError,
        "nothing to deploy",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(chart: Path, case: str) -> None:
    values, error, message = REFUSED[case]
    with pytest.raises(error) as excinfo:
        render(chart, values)
    assert message in str(excinfo.value)


def test_keda_external_nats_needs_monitoring_endpoint(chart: Path) -> None:
    values = {**NO_NATS, "externalNats": EXT_NATS, "worker": {"autoscaling": {"mode": "keda"}}}
    with pytest.raises(
        helm_python.HelmRenderError, match=r"needs externalNats\.monitoringEndpoint"
    ):
        render(chart, values, api_versions=[KEDA_API])
    values["externalNats"] = {**EXT_NATS, "monitoringEndpoint": "nats:8222"}
    r = render(chart, values, api_versions=[KEDA_API])
    assert r.find("ScaledObject")


def test_keda_min_zero_is_allowed(chart: Path) -> None:
    r = render(
        chart,
        {"worker": {"autoscaling": {"mode": "keda", "minReplicas": 0}}},
        api_versions=[KEDA_API],
    )
    assert r.get("ScaledObject", "demo-kiqstack-worker")["spec"]["minReplicaCount"] == 0


def test_subchart_values_stay_open(chart: Path) -> None:
    """Only kiqstack's own keys are strict: upstream subchart keys pass through."""
    r = render(
        chart, {"nats": {"podTemplate": {"merge": {}}}, "valkey": {"metrics": {"enabled": True}}}
    )
    assert r.find("Deployment")


@pytest.mark.parametrize(
    "values",
    [
        {"apiToken": "s3cret"},
        {"existingSecret": "api-token"},
        {"server": {"ingress": {"allowUnauthenticated": True}}},
    ],
    ids=["token", "existing-secret", "explicit-opt-out"],
)
def test_ingress_renders_with_token_or_opt_out(chart: Path, values: dict[str, Any]) -> None:
    server = values.pop("server", {})
    ingress = {"enabled": True, **server.get("ingress", {})}
    r = render(chart, {**values, "server": {"ingress": ingress}})
    r.get("Ingress", "demo-kiqstack-server")
    if "allowUnauthenticated" in ingress:
        assert "WARNING: the API has no token" in r.notes
        assert "the Ingress (kiqstack.local) can run any registered task" in r.notes
    else:
        assert "WARNING" not in r.notes


def test_no_ingress_check_without_a_server(chart: Path) -> None:
    r = render(chart, {"server": {"enabled": False, "ingress": {"enabled": True}}})
    assert not r.find("Ingress")


def test_open_service_outside_the_cluster_is_warned(chart: Path) -> None:
    r = render(chart, {"server": {"service": {"type": "LoadBalancer"}}})
    assert "the LoadBalancer Service demo-kiqstack-server (reachable from outside" in r.notes
