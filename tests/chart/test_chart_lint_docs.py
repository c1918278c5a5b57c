"""helm lint (Helm 4 as a library), the values schema and the generated chart README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import helm_python
import pytest
import yaml

from tests.chart.chartlib import CHART_DIR, render

pytestmark = pytest.mark.chart

REPO = CHART_DIR.parent
# Findings that are accepted, with the reason (see chart/README.md and the report of issue 4).
ACCEPTED_INFO: set[str] = set()


@pytest.mark.parametrize("kube_version", [None, "v1.27.0", "v1.33.0", "v1.36.0"])
def test_lint_strict_is_clean(chart_path: Path, kube_version: str | None) -> None:
    report = helm_python.lint(chart_path, strict=True, namespace="apps", kube_version=kube_version)
    assert report["errors"] == []
    findings = [m for m in report["messages"] if m["error"] not in ACCEPTED_INFO]
    assert findings == []
    for message in report["messages"]:
        assert message["severity"] == 1  # info only: no warnings, no errors


def test_lint_with_values_files(chart_path: Path) -> None:
    for path in sorted(CHART_DIR.glob("values-*.yaml")):
        values = yaml.safe_load(path.read_text())
        report = helm_python.lint(chart_path, values, strict=True)
        assert report["errors"] == [], path.name
        assert [m for m in report["messages"] if m["severity"] > 1] == [], path.name


def test_renders_on_minimum_kube_version(chart_path: Path) -> None:
    # Neither lint nor template enforces Chart.yaml kubeVersion (install does); check the chart
    # renders for the oldest supported version, with the Capabilities of that version.
    r = render(chart_path, {}, kube_version="v1.27.0")
    assert (
        r.get("HorizontalPodAutoscaler", "demo-kiqstack-worker")["apiVersion"] == "autoscaling/v2"
    )


def test_values_yaml_schema_modeline_and_defaults_valid() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=values.schema.json"
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    import jsonschema

    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(text))


def test_schema_is_strict_for_own_blocks() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    open_blocks = []

    def walk(node: dict, path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                open_blocks.append(path)
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}")

    walk(schema, "")
    for name, definition in schema["$defs"].items():
        walk(definition, f"$defs.{name}")
    # only the subchart blocks and the free-form Kubernetes objects stay open
    assert sorted(open_blocks) == [".nats", ".valkey"]
    # a pool takes every key of `worker` (by reference, never `required`: it sets what differs)
    pool = schema["$defs"]["workerPool"]
    worker = schema["properties"]["worker"]["properties"]
    assert set(pool["properties"]) == set(worker) | {
        "queues",
        "concurrency",
        "processes",
        "fetchBatch",
        "shutdownTimeout",
    }
    assert set(pool["properties"]["autoscaling"]["properties"]) == set(
        worker["autoscaling"]["properties"]
    )
    assert "required" not in json.dumps(pool)
    assert schema["properties"]["workers"]["additionalProperties"] == {"$ref": "#/$defs/workerPool"}
    assert schema["properties"]["worker"]["properties"]["autoscaling"]["properties"]["mode"][
        "enum"
    ] == [
        "hpa",
        "keda",
        "none",
    ]


def test_every_value_is_documented() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import chart_docs
    finally:
        sys.path.pop(0)
    text = (CHART_DIR / "values.yaml").read_text()
    docs = chart_docs.parse_comments(text)
    assert chart_docs.undocumented(yaml.safe_load(text), docs) == []
    paths = [d.path for d in docs]
    for key in (
        "image.repository",
        "image.tag",
        "image.pullPolicy",
        "worker.autoscaling.mode",
        "workers",
        "workers.default.queues",
        "workers.default.concurrency",
        "scheduler.enabled",
        "scheduler.replicas",
        "config.reload",
    ):
        assert key in paths
    assert len(paths) == len(set(paths))


def test_readme_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    readme = (CHART_DIR / "README.md").read_text()
    for section in (
        "## Install",
        "## Upgrade",
        "## External NATS and Redis",
        "## Worker autoscaling",
        "## Worker pools",
        "## Routing a task to a pool",
        "## Scale to zero with KEDA",
        "## The scheduler",
        "## Metrics",
        "## Security",
    ):
        assert section in readme
    assert "helm repo add nats https://nats-io.github.io/k8s/helm/charts/" in readme
    assert "helm repo add valkey https://valkey.io/valkey-helm/" in readme


def test_readme_check_detects_drift(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "chart"
    shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("charts"))
    values = copy / "values.yaml"
    values.write_text(
        values.read_text().replace("# -- Image pull policy.", "# -- Pull policy of the image.")
    )
    cmd = [sys.executable, str(REPO / "scripts" / "chart_docs.py"), "--chart", str(copy), "--check"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "out of date" in result.stderr
    values.write_text(values.read_text().replace("  # -- Pull policy of the image.\n", ""))
    result = subprocess.run(cmd[:-1], capture_output=True, text=True, check=False)
    assert result.returncode == 1  # generation refuses an undocumented key
    assert "image.pullPolicy" in result.stderr


def test_no_machine_paths_in_chart() -> None:
    # The folder holding this checkout is a path of the machine, never of the chart.
    machine_dir = str(CHART_DIR.parent.parent) + "/"
    for path in CHART_DIR.rglob("*"):
        if path.is_file() and "charts" not in path.relative_to(CHART_DIR).parts:
            assert machine_dir not in path.read_text(errors="replace"), path
