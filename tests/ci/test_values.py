"""chart/values-dev.yaml (skaffold) and the e2e values (kind, existing cluster, harness) fit.

kiqstack's own keys are checked by chart/values.schema.json; the subchart keys (the NATS chart has
no schema: old or misspelt keys are silently ignored) are checked against the upstream keys below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.chart.chartlib import CHART_DIR, render_objects, validate_schema
from tests.ci.conftest import ROOT, find, load_yaml


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


VALUES_FILES = [
    "chart/values-dev.yaml",
    "e2e/values.yaml",
    "e2e/existing-values.yaml",
    "e2e/example-values.yaml",
    "e2e/harness/values.yaml",
]

# Keys kiqstack sets in the subcharts, as they exist upstream (nats-io/k8s 957650f
# helm/charts/nats/values.yaml at chart 2.14.2; valkey-io/valkey-helm valkey/values.yaml at 0.11.0).
UPSTREAM_KEYS = {
    "nats": {
        "enabled",  # the dependency condition, not an upstream key
        "config.cluster.enabled",
        "config.jetstream.fileStore.pvc.size",
        "config.jetstream.fileStore.pvc.enabled",
        "container.resources.requests.cpu",
        "container.resources.requests.memory",
        "container.resources.limits.memory",
    },
    "valkey": {
        "enabled",
        "dataStorage.enabled",
        "dataStorage.requestedSize",
        "resources.requests.cpu",
        "resources.requests.memory",
        "resources.limits.memory",
    },
}


def _leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{path}.")
        else:
            out.add(path)
    return out


def _values(path: str) -> dict[str, Any]:
    values: dict[str, Any] = load_yaml(ROOT / path)
    return values


@pytest.fixture(scope="module")
def values_schema() -> dict[str, Any]:
    schema: dict[str, Any] = helm_python.Chart.load(CHART_DIR).schema or {}
    assert schema, "chart/values.schema.json is missing"
    return schema


@pytest.mark.parametrize("path", VALUES_FILES)
def test_values_satisfy_the_chart_schema(
    chart: Path, values_schema: dict[str, Any], path: str
) -> None:
    values = _values(path)
    with helm_python.Chart.load(chart) as loaded:
        jsonschema.validate(loaded.merge_values(values), values_schema)
        loaded.validate_schema(values)  # Helm's own check, as `helm install` runs it


@pytest.mark.parametrize("path", VALUES_FILES)
def test_values_only_override_existing_keys(path: str) -> None:
    """Per-environment files hold overrides only: every kiqstack key exists in values.yaml."""
    defaults = load_yaml(CHART_DIR / "values.yaml")
    values = _values(path)
    # A pool `workers.<name>` takes the keys of `worker` (its defaults) and of the default pool.
    pool_keys = {**defaults["worker"], **defaults["workers"]["default"]}
    for key in _leaves({k: v for k, v in values.items() if k not in UPSTREAM_KEYS}):
        node: Any = defaults
        parts = key.split(".")
        if parts[0] == "workers" and len(parts) > 2:
            node, parts = pool_keys, parts[2:]
        for part in parts:
            if node == {}:
                break  # a free-form map of the chart (a label selector, annotations)
            assert isinstance(node, dict), f"{path}: {key} is not a chart value"
            assert part in node, f"{path}: {key} is not a chart value"
            node = node[part]
    for subchart, allowed in UPSTREAM_KEYS.items():
        unknown = _leaves(values.get(subchart, {})) - allowed
        assert not unknown, f"{path}: {subchart} keys not known upstream: {sorted(unknown)}"


def test_dev_values_fit_the_inner_loop() -> None:
    dev = _values("chart/values-dev.yaml")
    assert dev["config"]["reload"] is True, "skaffold dev relies on uvicorn/taskiq --reload"
    assert dev["securityContext"]["readOnlyRootFilesystem"] is False, "file sync writes /app"
    assert dev["server"]["replicas"] == 1
    assert dev["worker"]["autoscaling"]["mode"] == "none", "no metrics-server needed for dev"
    assert dev["nats"]["config"]["cluster"]["enabled"] is False, "one NATS server"


def test_existing_cluster_values_keep_the_chart_defaults() -> None:
    """`make e2e-existing` and .ci/run install as a user would: the chart's defaults plus only
    what the suite needs (two workers, the example task package and a pool for its `cpu` queue)
    and, with the harness, the external NATS and Valkey, fenced by the release's NetworkPolicies."""
    assert _values("e2e/existing-values.yaml") == {"worker": {"autoscaling": {"minReplicas": 2}}}
    example = _values("e2e/example-values.yaml")
    assert set(example) == {"config", "workers"}
    assert example["config"] == {"taskModules": "app.tasks.example,acme_tasks.tasks"}
    assert set(example["workers"]) == {"cpu"}
    assert example["workers"]["cpu"]["queues"] == ["cpu"]
    harness = _values("e2e/harness/values.yaml")
    assert set(harness) == {"nats", "valkey", "externalNats", "externalRedis", "networkPolicy"}


def test_example_values_name_the_example_packages_module() -> None:
    """e2e/example-values.yaml serves examples/acme-tasks (the image e2e/run.sh deploys)."""
    modules = _values("e2e/example-values.yaml")["config"]["taskModules"].split(",")
    for module in modules:
        root = ROOT / "examples" / "acme-tasks" if module.startswith("acme_tasks") else ROOT
        assert (root / (module.replace(".", "/") + ".py")).is_file(), module


def test_harness_servers_are_fenced_by_the_release(chart: Path) -> None:
    """The harness's NATS and Valkey pods get the release's NetworkPolicies: client ports only from
    the release's pods (e2e/test_network_policy.py checks that the cluster enforces them)."""
    values = _values("e2e/existing-values.yaml") | _values("e2e/harness/values.yaml")
    objects = render_objects(chart, values, name="kiqstack", namespace="kiqstack")
    release = [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "kiqstack"}}}]
    for name, manifest, port in (("nats", "nats.yaml", 4222), ("valkey", "valkey.yaml", 6379)):
        pod_labels = next(
            o["spec"]["template"]["metadata"]["labels"]
            for o in load_yaml_all(ROOT / "e2e" / "harness" / manifest)
            if o["kind"] == "Deployment"
        )
        policy = find(objects, "NetworkPolicy", f"kiqstack-{name}")["spec"]
        selector = policy["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), (name, selector, pod_labels)
        client_rule = next(r for r in policy["ingress"] if r["ports"][0]["port"] == port)
        assert client_rule["from"] == release, client_rule


def test_e2e_values_fit_the_suite() -> None:
    e2e = _values("e2e/values.yaml")
    assert "reload" not in e2e.get("config", {}), "e2e runs production settings"
    assert "securityContext" not in e2e, "e2e keeps the read-only root filesystem"
    autoscaling = e2e["worker"]["autoscaling"]
    assert autoscaling["mode"] == "hpa"
    assert autoscaling["minReplicas"] >= 2, "the pod-deletion test needs a second worker"
    assert e2e["config"]["ackWaitSeconds"] <= 60, "redelivery must happen within the test timeouts"
    assert e2e["config"]["taskModules"] == "app.tasks.example", "the suite runs the examples"
    assert e2e["nats"]["config"]["cluster"]["enabled"] is False, "one NATS server on kind"
    pvc = e2e["nats"]["config"]["jetstream"]["fileStore"]["pvc"]
    assert pvc["enabled"] is False, "the NATS data-loss test needs NATS without persistence"


@pytest.mark.parametrize("path", ["chart/values-dev.yaml", "e2e/values.yaml"])
def test_values_render_small_pods(chart: Path, path: str) -> None:
    values = _values(path) | {"image": {"repository": "kiqstack", "tag": "test"}}
    objects = render_objects(chart, values, name="kiqstack", namespace="kiqstack")
    for name in ("kiqstack-server", "kiqstack-worker"):
        pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        for container in pod["containers"]:
            requests = container["resources"]["requests"]
            assert requests["cpu"].endswith("m"), requests
            assert int(requests["cpu"][:-1]) <= 100, requests
            assert requests["memory"].endswith("Mi"), requests
            assert int(requests["memory"][:-2]) <= 128, requests


def test_the_e2e_upgrade_setting_changes_both_pod_templates(chart: Path) -> None:
    """e2e/test_upgrade.py toggles config.logLevel and expects both Deployments to roll."""
    base = _values("e2e/values.yaml") | {"image": {"repository": "kiqstack", "tag": "test"}}
    rendered = {}
    for level in ("INFO", "DEBUG"):
        values = base | {"config": base["config"] | {"logLevel": level}}
        validate_schema(chart, values)
        rendered[level] = render_objects(chart, values, name="kiqstack", namespace="kiqstack")
    for name in ("kiqstack-server", "kiqstack-worker"):
        before, after = (
            find(rendered[level], "Deployment", name)["spec"]["template"]["metadata"]
            for level in ("INFO", "DEBUG")
        )
        assert before["annotations"] != after["annotations"], f"{name} would not roll"
    assert find(rendered["DEBUG"], "ConfigMap", "kiqstack")["data"]["LOG_LEVEL"] == "DEBUG"
