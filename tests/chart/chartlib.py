"""Helpers of the chart tests: stand-in subcharts, a renderer and validators.

No helm CLI and no chart repositories are reachable here, so ``charts/`` cannot be built from the
real ``nats`` and ``valkey`` charts. Helm refuses to render or lint a chart whose declared
dependencies are missing, so the fixture copies ``chart/`` and writes minimal stand-ins with the
pinned names and versions. The stand-ins render the upstream Service names (same "release name
contains the chart name" rule as nats-io/k8s and valkey-io/valkey-helm), which lets tests check
that NATS_URL/REDIS_URL point at a Service that really exists in the same render. The real
subcharts are exercised by the kind e2e.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

CHART_DIR = Path(__file__).resolve().parents[2] / "chart"

# Upstream fullname logic (nats-io/k8s helm/charts/nats/templates/_helpers.tpl "nats.fullname",
# valkey-io/valkey-helm valkey/templates/_helpers.tpl "valkey.fullname").
_FULLNAME_TPL = """{{- define "standin.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}
"""

_SERVICE_TPL = """apiVersion: v1
kind: Service
metadata:
  name: {{ include "standin.fullname" . }}%(suffix)s
  labels:
    app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  %(extra)sselector:
    app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
%(ports)s
"""

STANDINS: dict[str, dict[str, Any]] = {
    "nats": {
        "version": "2.14.2",
        "appVersion": "2.14.2",
        # upstream defaults of the keys kiqstack touches
        "values": {
            "nameOverride": None,
            "fullnameOverride": None,
            "config": {
                "cluster": {"enabled": False, "replicas": 3},
                "jetstream": {"enabled": False},
                "monitor": {"enabled": True, "port": 8222},
            },
            "natsBox": {"enabled": True},
        },
        "services": {
            "": ("", "    - {name: nats, port: 4222}"),
            "-headless": (
                "clusterIP: None\n  ",
                "    - {name: nats, port: 4222}\n    - {name: monitor, port: 8222}",
            ),
        },
    },
    "valkey": {
        "version": "0.11.0",
        "appVersion": "9.1.1",
        "values": {
            "nameOverride": "",
            "fullnameOverride": "",
            "deploymentStrategy": "RollingUpdate",
            "dataStorage": {"enabled": False},
            "auth": {"enabled": False, "usersExistingSecret": "", "aclUsers": {}},
            "service": {"port": 6379},
        },
        "services": {"": ("", "    - {name: tcp, port: 6379}")},
    },
}


def write_standin(charts_dir: Path, name: str, spec: dict[str, Any]) -> None:
    root = charts_dir / name
    (root / "templates").mkdir(parents=True)
    (root / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": name,
                "version": spec["version"],
                "appVersion": spec["appVersion"],
                "description": f"Test stand-in for the upstream {name} chart",
            }
        )
    )
    (root / "values.yaml").write_text(yaml.safe_dump(spec["values"]))
    (root / "templates" / "_helpers.tpl").write_text(_FULLNAME_TPL)
    for suffix, (extra, ports) in spec["services"].items():
        fname = f"service{suffix or '-client'}.yaml"
        (root / "templates" / fname).write_text(
            _SERVICE_TPL % {"suffix": suffix, "extra": extra, "ports": ports}
        )


def copy_chart(dest: Path) -> Path:
    """Copy chart/ to ``dest`` with the stand-in subcharts under charts/; returns ``dest``."""
    shutil.copytree(CHART_DIR, dest, ignore=shutil.ignore_patterns("charts", "*.tgz"))
    for name, spec in STANDINS.items():
        write_standin(dest / "charts", name, spec)
    return dest


class Rendered:
    """Objects rendered from one set of values, with lookups by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.manifests = manifests
        self.objects: list[dict[str, Any]] = []
        self.notes = ""
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("metadata", {}).setdefault("annotations", None)
                    if doc["metadata"]["annotations"] is None:
                        del doc["metadata"]["annotations"]
                    self.objects.append({**doc, "_source": path})

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def own(self) -> list[dict[str, Any]]:
        """Objects from kiqstack's templates (not from the stand-in subcharts)."""
        return [o for o in self.objects if "/charts/" not in o["_source"]]

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
        ]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = self.find(kind, name)
        assert len(found) == 1, f"expected one {kind}/{name}, got {len(found)}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)


def validate_schema(chart: Path, values: dict[str, Any]) -> None:
    """Check values against the chart's values.schema.json (raises HelmValuesError)."""
    with helm_python.Chart.load(chart) as loaded:
        loaded.validate_schema(values)


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the test's bookkeeping keys."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def render(
    chart: Path,
    values: dict[str, Any] | None = None,
    *,
    name: str = "demo",
    namespace: str = "apps",
    api_versions: list[str] | None = None,
    kube_version: str | None = None,
) -> Rendered:
    """Render the chart directory like ``helm template`` (``api_versions``: ``--api-versions``).

    The chart is loaded afresh for every render: Helm drops the subcharts whose ``condition`` is
    false from the loaded chart object itself, so a shared ``helm_python.Chart`` would lose its
    dependencies after the first render with ``nats.enabled: false``.

    helm_python's public ``render`` has no ``api_versions``/``kube_version`` options although the
    native library accepts them, so those calls go through the native entry point.
    """
    with helm_python.Chart.load(chart) as loaded:
        if api_versions is None and kube_version is None:
            manifests = loaded.render(values, name=name, namespace=namespace, is_install=True)
        else:
            opts: dict[str, Any] = {"name": name, "namespace": namespace, "is_install": True}
            if api_versions:
                opts["api_versions"] = api_versions
            if kube_version:
                opts["kube_version"] = kube_version
            raw = _native.call_string(
                "helm_render",
                loaded._raw(),
                json.dumps(values) if values else None,
                json.dumps(opts),
            )
            manifests = json.loads(raw)
    return Rendered(manifests)


def render_objects(
    chart: Path, values: dict[str, Any] | None, *, name: str, namespace: str
) -> list[dict[str, Any]]:
    """Render like ``helm template`` and return kiqstack's own objects (not the stand-ins'),
    without the test's bookkeeping keys."""
    return [clean(o) for o in render(chart, values, name=name, namespace=namespace).own()]


K8S_VERSIONS = ("1.33", "1.36")
KEDA_API = "keda.sh/v1alpha1/ScaledObject"
MONITORING_APIS = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
]
ALL_APIS = [KEDA_API, *MONITORING_APIS]


def validate_objects(rendered: Rendered) -> int:
    """Validate every object: built-in kinds with kubernetes-validate (strict) for each version in
    K8S_VERSIONS, CRD kinds against crd_schemas. Returns the number of objects checked."""
    import jsonschema
    import kubernetes_validate
    from crd_schemas import SCHEMAS

    problems: list[str] = []
    for obj in rendered.objects:
        body = clean(obj)
        label = f"{obj['kind']}/{obj['metadata']['name']} ({obj['_source']})"
        if obj["kind"] in SCHEMAS:
            for err in jsonschema.Draft202012Validator(SCHEMAS[obj["kind"]]).iter_errors(body):
                problems.append(f"{label}: {err.json_path}: {err.message}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                problems.append(f"{label} on {version}: {err.message} at {list(err.path)}")
            except kubernetes_validate.SchemaNotFoundError as err:
                problems.append(f"{label} on {version}: no schema ({err})")
    assert not problems, "\n".join(problems)
    return len(rendered.objects)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The single container of a Deployment's pod template."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_map(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env entries by name (asserts that names are unique, as Helm 4 SSA needs)."""
    entries = container(deployment).get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}
