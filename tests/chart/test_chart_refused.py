"""Bad values are refused with a clear message, by values.schema.json or by a template ``fail``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.chart.chartlib import KEDA_API, render

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
    # worker pools and the scheduler
    "bad-pool-name": (
        {"workers": {"CPU": {}}},
        helm_python.HelmValuesError,
        "'CPU' does not match pattern '^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$'",
    ),
    "bad-queue-name": (
        {"workers": {"cpu": {"queues": ["cpu.heavy"]}}},
        helm_python.HelmValuesError,
        "at '/workers/cpu/queues/0': 'cpu.heavy' does not match pattern",
    ),
    "empty-queues": (
        {"workers": {"cpu": {"queues": []}}},
        helm_python.HelmValuesError,
        "at '/workers/cpu/queues': minItems: got 0, want 1",
    ),
    "queue-twice": (
        {"workers": {"cpu": {"queues": ["cpu", "cpu"]}}},
        helm_python.HelmValuesError,
        "at '/workers/cpu/queues': items at 0 and 1 are equal",
    ),
    "typo-in-pool": (
        {"workers": {"cpu": {"autoscalling": {}}}},
        helm_python.HelmValuesError,
        "at '/workers/cpu': additional properties 'autoscalling' not allowed",
    ),
    "pool-mode-unknown": (
        {"workers": {"cpu": {"autoscaling": {"mode": "vpa"}}}},
        helm_python.HelmValuesError,
        "at '/workers/cpu/autoscaling/mode': value must be one of 'hpa', 'keda', 'none'",
    ),
    "pool-concurrency-zero": (
        {"workers": {"cpu": {"concurrency": 0}}},
        helm_python.HelmValuesError,
        "at '/workers/cpu/concurrency'",
    ),
    "queues-on-the-defaults": (
        {"worker": {"queues": ["cpu"]}},
        helm_python.HelmValuesError,
        "at '/worker': additional properties 'queues' not allowed",
    ),
    "scheduler-zero-replicas": (
        {"scheduler": {"replicas": 0}},
        helm_python.HelmValuesError,
        "at '/scheduler/replicas': minimum: got 0, want 1",
    ),
    "typo-in-scheduler": (
        {"scheduler": {"replica": 2}},
        helm_python.HelmValuesError,
        "at '/scheduler': additional properties 'replica' not allowed",
    ),
    "default-queue-unserved": (
        {"workers": {"default": {"queues": ["cpu"]}}},
        helm_python.HelmRenderError,
        'no enabled worker pool serves the queue "default" (pools: default [cpu]): tasks that '
        "name no queue, and the built-in kiqstack.ping of the helm test, would wait forever",
    ),
    "default-pool-off-nothing-else": (
        {"workers": {"default": {"enabled": False}, "cpu": {}}},
        helm_python.HelmRenderError,
        'no enabled worker pool serves the queue "default" (pools: cpu [cpu])',
    ),
    "pool-hpa-min-zero": (
        {"workers": {"cpu": {"autoscaling": {"minReplicas": 0}}}},
        helm_python.HelmRenderError,
        "workers.cpu: autoscaling.minReplicas must be at least 1 with mode=hpa",
    ),
    "pool-min-above-max": (
        {"workers": {"cpu": {"autoscaling": {"mode": "keda", "minReplicas": 3, "maxReplicas": 2}}}},
        helm_python.HelmRenderError,
        "workers.cpu: autoscaling.minReplicas (3) must not exceed maxReplicas (2)",
    ),
    "pool-hpa-without-target": (
        {"workers": {"cpu": {"autoscaling": {"targetCPUUtilizationPercentage": None}}}},
        helm_python.HelmRenderError,
        "workers.cpu: autoscaling.mode=hpa needs targetCPUUtilizationPercentage or "
        "targetMemoryUtilizationPercentage",
    ),
    "pool-cpu-target-without-request": (
        {"workers": {"cpu": {"resources": {"requests": {"cpu": None}}}}},
        helm_python.HelmRenderError,
        "workers.cpu: autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu",
    ),
    "pool-keda-without-crd": (
        {"workers": {"cpu": {"autoscaling": {"mode": "keda"}}}},
        helm_python.HelmRenderError,
        "workers.cpu.autoscaling.mode=keda needs the keda.sh/v1alpha1/ScaledObject API",
    ),
    "pool-name-too-long": (
        {"fullnameOverride": "x" * 40, "workers": {"y" * 20: {}}},
        helm_python.HelmRenderError,
        f"workers.{'y' * 20}: its objects would be named {'x' * 40}-worker-{'y' * 20} "
        "(68 characters, more than 63)",
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


def test_keda_pool_with_external_nats_needs_monitoring_endpoint(chart: Path) -> None:
    pool = {"autoscaling": {"mode": "keda"}}
    values = {**NO_NATS, "externalNats": EXT_NATS, "workers": {"cpu": pool}}
    with pytest.raises(helm_python.HelmRenderError, match=r"workers\.cpu: autoscaling\.mode=keda"):
        render(chart, values, api_versions=[KEDA_API])
    # the pool's own endpoint (or externalNats.monitoringEndpoint) is enough
    pool["autoscaling"]["keda"] = {"natsServerMonitoringEndpoint": "nats.messaging:8222"}
    r = render(chart, values, api_versions=[KEDA_API])
    so = r.get("ScaledObject", "demo-kiqstack-worker-cpu")
    assert so["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"] == (
        "nats.messaging:8222"
    )


@pytest.fixture(scope="module")
def chart_without_schema(chart: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart without values.schema.json: what `--skip-schema-validation` renders."""
    copy = tmp_path_factory.mktemp("noschema") / "kiqstack"
    shutil.copytree(chart, copy)
    (copy / "values.schema.json").unlink()
    return copy


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ({"CPU": {}}, "workers.CPU: a pool name is 1 to 32 lowercase letters"),
        ({"cpu": {"queues": ["cpu.heavy"]}}, "workers.cpu.queues: cpu.heavy is not a queue name"),
        ({"cpu": {"queues": []}}, "workers.cpu.queues is empty"),
        ({"cpu": {"queues": "cpu"}}, "workers.cpu.queues must be a list of queue names"),
        ({"cpu": {"queues": ["a", "a"]}}, "workers.cpu.queues lists a queue twice: a, a"),
        ({"cpu": {"autoscaling": {"mode": "vpa"}}}, "workers.cpu.autoscaling.mode must be hpa"),
        ({"cpu": "big"}, "workers.cpu must be a map of pool values"),
    ],
)
def test_pools_refused_without_the_schema(
    chart_without_schema: Path, workers: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as excinfo:
        render(chart_without_schema, {"workers": workers})
    assert message in str(excinfo.value)
