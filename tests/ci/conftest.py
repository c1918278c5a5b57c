"""Shared helpers of the offline deploy-config checks (skaffold, kind, workflows, dev/e2e values).

The chart is rendered with Helm 4 as a library (``helm_python``); no helm, skaffold or kind binary
is needed. Helm refuses to render a chart whose dependencies are missing and no chart repository is
reachable here, so the ``chart`` fixture is a temporary copy of ``chart/`` with the chart tests'
stand-in ``nats`` and ``valkey`` subcharts (``tests/chart/chartlib.py``, which also renders it).
The real subcharts are exercised by the kind e2e.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonpatch
import jsonpointer
import jsonschema
import pytest
import yaml

from tests.chart.chartlib import CHART_DIR, copy_chart

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `on`/`off`/`yes`/`no` stay strings, as in GitHub
    Actions, skaffold and kind (Go YAML parsers). PyYAML's 1.1 rules would turn `on:` into True."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return schema


def schema_errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Readable leaf errors (``anyOf`` errors are unfolded to their deepest context)."""
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    out = []
    for error in validator.iter_errors(instance):
        best = jsonschema.exceptions.best_match([error])
        out.append(f"/{'/'.join(str(p) for p in best.absolute_path)}: {best.message}")
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values files: maps merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- JSON patch (RFC 6902, as skaffold profiles use it) ---------------------------------------


def apply_patches(doc: Any, patches: list[dict[str, Any]]) -> Any:
    """Apply skaffold profile patches (``op`` defaults to replace); fails on a bad path."""
    operations = [{"op": "replace", **patch} for patch in patches]
    try:
        return jsonpatch.apply_patch(doc, operations)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise AssertionError(f"invalid patch {patches}: {exc}") from None


# --- skaffold ---------------------------------------------------------------------------------


def sanitize(image: str) -> str:
    """skaffold's template-variable suffix of an artifact (`util.SanitizeHelmTemplateValue`)."""
    return re.sub(r"[./:\-]", "_", image)


def skaffold_doc() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(ROOT / "skaffold.yaml")
    return doc


def effective_skaffold(profile: str | None) -> dict[str, Any]:
    """skaffold.yaml with one profile's patches applied (what `skaffold diagnose -p` shows)."""
    doc = skaffold_doc()
    if profile is None:
        return doc
    (prof,) = [p for p in doc["profiles"] if p["name"] == profile]
    base = {k: v for k, v in doc.items() if k != "profiles"}
    patched: dict[str, Any] = apply_patches(base, prof.get("patches", []))
    return patched


_TEMPLATE = re.compile(r"\{\{\s*\.([A-Za-z0-9_]+)\s*\}\}")


def expand_template(text: str, env: dict[str, str]) -> str:
    """skaffold's ExpandEnvTemplate for `{{.VAR}}`: an unknown name renders `<no value>`."""
    return _TEMPLATE.sub(lambda m: env.get(m.group(1), "<no value>"), text)


def image_env(doc: dict[str, Any], tag: str) -> dict[str, str]:
    """Template variables skaffold offers for locally built (not pushed) artifacts."""
    env: dict[str, str] = {}
    for artifact in doc["build"]["artifacts"]:
        name = artifact["image"]
        suffix = sanitize(name)
        env[f"IMAGE_REPO_{suffix}"] = name
        env[f"IMAGE_TAG_{suffix}"] = tag
        env[f"IMAGE_FULLY_QUALIFIED_{suffix}"] = f"{name}:{tag}"
        env[f"IMAGE_NAME_{suffix}"] = name
        env[f"IMAGE_DIGEST_{suffix}"] = ""
    return env


def release_values(doc: dict[str, Any], tag: str) -> dict[str, Any]:
    """The values one skaffold helm release installs with: -f files, then --set overrides."""
    (release,) = doc["deploy"]["helm"]["releases"]
    values: dict[str, Any] = {}
    for path in release.get("valuesFiles", []):
        values = deep_merge(values, load_yaml(ROOT / path) or {})
    env = image_env(doc, tag)
    for key, value in sorted(release.get("setValues", {}).items()):
        values = deep_merge(values, helm_python.parse_set_string(f"{key}={value}"))
    for key, template in sorted(release.get("setValueTemplates", {}).items()):
        expanded = expand_template(template, env)
        values = deep_merge(values, helm_python.parse_set_string(f"{key}={expanded}"))
    return values


# --- chart rendering --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp copy of chart/ with stand-in subcharts (chartlib.render loads it afresh each time)."""
    if not (CHART_DIR / "Chart.yaml").is_file():
        pytest.fail("chart/Chart.yaml is missing")
    return copy_chart(tmp_path_factory.mktemp("ci-chart") / "kiqstack")


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert len(found) == 1, f"expected one {kind}/{name}; rendered: {names}"
    return found[0]
