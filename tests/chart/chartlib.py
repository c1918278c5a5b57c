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
import tempfile
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

CHART_DIR = Path(__file__).resolve().parents[2] / "chart"

# The stand-ins mimic, for the keys kiqstack relies on, these upstream files:
#   nats-io/k8s 957650f helm/charts/nats (2.14.2): templates/_helpers.tpl ("nats.fullname",
#     "nats.selectorLabels", "nats.env"), templates/_tplYaml.tpl ($tplYaml values, "Templating
#     Values" in its README), files/config-map.yaml + "nats.formatConfig" (config.merge, with
#     "<< $VAR >>" unquoted into a NATS variable), files/stateful-set/nats-container.yaml (env),
#     templates/service.yaml, templates/headless-service.yaml;
#   valkey-io/valkey-helm 0.11.0 valkey/: templates/_helpers.tpl ("valkey.fullname",
#     "valkey.selectorLabels", "valkey.validateAuthConfig"), templates/deploy_valkey.yaml (pod
#     labels, REDIS_PASSWORD and the users Secret volume from a templated usersExistingSecret),
#     templates/service.yaml.
_FULLNAME_TPL = """{{- define "%(chart)s.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%%s-%%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}
"""

_SERVICE_TPL = """apiVersion: v1
kind: Service
metadata:
  name: {{ include "%(chart)s.fullname" . }}%(suffix)s
  labels:
    {{- include "%(chart)s.selectorLabels" . | nindent 4 }}
spec:
  %(extra)sselector:
    {{- include "%(chart)s.selectorLabels" . | nindent 4 }}
  ports:
%(ports)s
"""

_NATS_HELPERS = """{{- define "nats.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end }}

{{- /* $tplYaml: a map {"$tplYaml": tpl} anywhere in the values is replaced by tpl, templated in
the chart's context and parsed as YAML. Input (dict "ctx" $ "value" x), output {"v": resolved}. */}}
{{- define "standin.nats.tplYaml" -}}
{{- $v := .value }}
{{- if and (kindIs "map" $v) (eq (len $v) 1) (hasKey $v "$tplYaml") }}
{{- $res := tpl (get $v "$tplYaml") .ctx }}
{{- $v = get (fromYaml (printf "tpl:%s" (nindent 2 $res))) "tpl" }}
{{- else if kindIs "map" $v }}
{{- $out := dict }}
{{- range $key, $item := $v }}
{{- $r := include "standin.nats.tplYaml" (dict "ctx" $.ctx "value" $item) | fromJson }}
{{- $_ := set $out $key (get $r "v") }}
{{- end }}
{{- $v = $out }}
{{- else if kindIs "slice" $v }}
{{- $out := list }}
{{- range $v }}
{{- $r := include "standin.nats.tplYaml" (dict "ctx" $.ctx "value" .) | fromJson }}
{{- $out = append $out (get $r "v") }}
{{- end }}
{{- $v = $out }}
{{- end }}
{{- dict "v" $v | toJson }}
{{- end }}

{{- define "standin.nats.values" -}}
{{- get (include "standin.nats.tplYaml" (dict "ctx" . "value" .Values) | fromJson) "v" | toJson }}
{{- end }}

{{- /* nats.env: a map of name -> string value or EnvVar fields, as a list of EnvVar */}}
{{- define "nats.env" -}}
{{- range $k, $v := . }}
{{- if kindIs "string" $v }}
- name: {{ $k | quote }}
  value: {{ $v | quote }}
{{- else if kindIs "map" $v }}
- {{ merge (dict "name" $k) $v | toYaml | nindent 2 }}
{{- else }}
{{- fail (cat "env var" $k "must be string or map, got" (kindOf $v)) }}
{{- end }}
{{- end }}
{{- end }}
"""

_NATS_CONFIGMAP = """{{- $values := include "standin.nats.values" . | fromJson }}
{{- $config := dict "port" $values.config.nats.port }}
{{- if $values.config.monitor.enabled }}
{{- $_ := set $config "http_port" $values.config.monitor.port }}
{{- end }}
{{- $config = mergeOverwrite $config (deepCopy ($values.config.merge | default dict)) }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "nats.fullname" . }}-config
  labels:
    {{- include "nats.selectorLabels" . | nindent 4 }}
data:
  nats.conf: {{ regexReplaceAll "\\"<<\\\\s+(.*?)\\\\s+>>\\"" (toRawJson $config) "${1}" | quote }}
"""

_NATS_STATEFULSET = """{{- $values := include "standin.nats.values" . | fromJson }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ include "nats.fullname" . }}
  labels:
    {{- include "nats.selectorLabels" . | nindent 4 }}
spec:
  serviceName: {{ include "nats.fullname" . }}-headless
  selector:
    matchLabels:
      {{- include "nats.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "nats.selectorLabels" . | nindent 8 }}
    spec:
      containers:
        - name: nats
          image: nats:2.14.2-alpine
          args: ["--config", "/etc/nats-config/nats.conf"]
          ports:
            - {name: nats, containerPort: {{ $values.config.nats.port }}}
            - {name: monitor, containerPort: {{ $values.config.monitor.port }}}
          {{- with $values.container.env }}
          env:
            {{- include "nats.env" . | nindent 12 }}
          {{- end }}
"""

_VALKEY_HELPERS = """{{- define "valkey.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "standin.valkey.validateAuthConfig" -}}
{{- if .Values.auth.enabled }}
  {{- if not (or .Values.auth.aclUsers .Values.auth.aclConfig) }}
    {{- fail "auth.enabled is true but no authentication method is configured" }}
  {{- end }}
  {{- if .Values.auth.aclUsers }}
    {{- if not (hasKey .Values.auth.aclUsers "default") }}
      {{- fail "The 'default' user must be defined in auth.aclUsers" }}
    {{- end }}
    {{- range $username, $user := .Values.auth.aclUsers }}
      {{- if not $user.permissions }}
        {{- fail (printf "User '%s' in auth.aclUsers must have a 'permissions' field" $username) }}
      {{- end }}
      {{- if not (or $user.password $.Values.auth.usersExistingSecret) }}
        {{- $msg := "User '%s' must have either 'password' field or auth.usersExistingSecret" }}
        {{- fail (printf $msg $username) }}
      {{- end }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}
"""

_VALKEY_DEPLOYMENT = """{{- include "standin.valkey.validateAuthConfig" . }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "valkey.fullname" . }}
  labels:
    {{- include "valkey.selectorLabels" . | nindent 4 }}
spec:
  replicas: 1
  strategy:
    type: {{ .Values.deploymentStrategy }}
  selector:
    matchLabels:
      {{- include "valkey.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "valkey.selectorLabels" . | nindent 8 }}
    spec:
      containers:
        - name: {{ include "valkey.fullname" . }}
          image: valkey/valkey:9.1.1
          ports:
            - {name: tcp, containerPort: {{ .Values.service.port }}}
          {{- if .Values.auth.enabled }}
          env:
            - name: REDIS_PASSWORD
              valueFrom:
                secretKeyRef:
                  {{- if .Values.auth.usersExistingSecret }}
                  {{- $defaultUser := index .Values.auth.aclUsers "default" | default dict }}
                  name: {{ tpl .Values.auth.usersExistingSecret . }}
                  key: {{ $defaultUser.passwordKey | default "default" }}
                  {{- else }}
                  name: {{ include "valkey.fullname" . }}-auth
                  key: default-password
                  {{- end }}
          {{- end }}
      {{- if and .Values.auth.enabled .Values.auth.usersExistingSecret }}
      volumes:
        - name: valkey-users-secret
          secret:
            secretName: {{ tpl .Values.auth.usersExistingSecret . }}
      {{- end }}
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
                "cluster": {"enabled": False, "replicas": 3, "port": 6222},
                "jetstream": {"enabled": False},
                "monitor": {"enabled": True, "port": 8222},
                "nats": {"port": 4222},
                "merge": {},
            },
            "container": {"env": {}},
            "promExporter": {"enabled": False, "port": 7777},
            "natsBox": {"enabled": True},
        },
        "services": {
            "": ("", "    - {name: nats, port: 4222}"),
            "-headless": (
                "clusterIP: None\n  ",
                "    - {name: nats, port: 4222}\n    - {name: monitor, port: 8222}",
            ),
        },
        "templates": {
            "_helpers.tpl": _NATS_HELPERS,
            "config-map.yaml": _NATS_CONFIGMAP,
            "stateful-set.yaml": _NATS_STATEFULSET,
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
            "auth": {"enabled": False, "usersExistingSecret": "", "aclUsers": {}, "aclConfig": ""},
            "service": {"port": 6379},
            "metrics": {"enabled": False, "exporter": {"port": 9121}},
        },
        "services": {"": ("", "    - {name: tcp, port: 6379}")},
        "templates": {
            "_helpers.tpl": _VALKEY_HELPERS,
            "deploy_valkey.yaml": _VALKEY_DEPLOYMENT,
        },
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
    (root / "templates" / "_fullname.tpl").write_text(_FULLNAME_TPL % {"chart": name})
    for fname, text in spec["templates"].items():
        (root / "templates" / fname).write_text(text)
    for suffix, (extra, ports) in spec["services"].items():
        fname = f"service{suffix or '-client'}.yaml"
        (root / "templates" / fname).write_text(
            _SERVICE_TPL % {"chart": name, "suffix": suffix, "extra": extra, "ports": ports}
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


# Every lookup of the chart goes through this helper (test_chart_secrets checks it).
LOOKUP_HELPER = "kiqstack.lookupSecretData"
# Helm parses the templates of one chart in reverse lexical order of their paths and a later
# "define" of a name wins: a file named "_0..." is parsed after "_secrets.tpl" and replaces it.
_LOOKUP_STUB = """{{- define "%s" -}}
{{- $cluster := `%s` | fromJson }}
{{- get $cluster (printf "%%s/%%s" .ctx.Release.Namespace .name) | default dict | toJson }}
{{- end }}
"""


def render_upgrade(
    chart: Path, values: dict[str, Any] | None, previous: Rendered, **kwargs: Any
) -> Rendered:
    """Render like ``helm upgrade`` of a release installed as ``previous``.

    Offline, Helm's ``lookup`` finds nothing, so the upgrade path of the templates (keep what the
    cluster holds) can only be exercised by answering the lookups ourselves: a copy of ``chart``
    gets a template that redefines the chart's one lookup helper to return the data of the
    Secrets ``previous`` rendered (as the cluster would hold them after the install).
    """
    namespace = kwargs.get("namespace", "apps")
    cluster = {
        f"{namespace}/{o['metadata']['name']}": o.get("data", {}) for o in previous.find("Secret")
    }
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / chart.name
        shutil.copytree(chart, copy)
        (copy / "templates" / "_0_lookup_stub.tpl").write_text(
            _LOOKUP_STUB % (LOOKUP_HELPER, json.dumps(cluster))
        )
        return render(copy, values, **kwargs)


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

    from tests.chart.crd_schemas import SCHEMAS

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
