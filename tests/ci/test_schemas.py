"""skaffold.yaml, e2e/kind-config.yaml and the workflows validate against their saved JSON schemas.

The schemas are vendored in tests/ci/schemas/ (skaffold docs-v2 v4beta14.json, SchemaStore
kind-cluster.json and github-workflow.json) so the check runs offline and in users' CI.
"""

from __future__ import annotations

import copy
import filecmp
from pathlib import Path
from typing import Any

import pytest

from tests.ci.conftest import ROOT, SCHEMAS, load_schema, load_yaml, schema_errors

SKAFFOLD_SCHEMA = "skaffold-schema-v4beta14.json"
KIND_SCHEMA = "kind-cluster-schema.json"
WORKFLOW_SCHEMA = "github-workflow-schema.json"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))

CASES = [
    ("skaffold.yaml", SKAFFOLD_SCHEMA),
    ("e2e/kind-config.yaml", KIND_SCHEMA),
    *[(str(p.relative_to(ROOT)), WORKFLOW_SCHEMA) for p in WORKFLOWS],
]


def test_both_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "e2e.yml"}


@pytest.mark.parametrize(("path", "schema"), CASES, ids=[c[0] for c in CASES])
def test_file_validates_against_its_schema(path: str, schema: str) -> None:
    errors = schema_errors(load_yaml(ROOT / path), load_schema(schema))
    assert not errors, f"{path} does not match {schema}:\n" + "\n".join(errors)


def _broken(doc: dict[str, Any], path: list[str | int], key: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for part in path:
        node = node[part]
    node[key] = value
    return doc


@pytest.mark.parametrize(
    ("path", "schema", "where", "typo"),
    [
        ("skaffold.yaml", SKAFFOLD_SCHEMA, ["deploy", "helm", "releases", 0], "setValueTemplate"),
        ("skaffold.yaml", SKAFFOLD_SCHEMA, ["build", "local"], "pushh"),
        ("skaffold.yaml", SKAFFOLD_SCHEMA, ["portForward", 0], "resource"),
        ("e2e/kind-config.yaml", KIND_SCHEMA, ["nodes", 0], "extraPortMapping"),
        (".github/workflows/e2e.yml", WORKFLOW_SCHEMA, ["jobs", "kind"], "timeout-minute"),
    ],
    ids=["skaffold-release", "skaffold-local", "skaffold-portforward", "kind-node", "workflow-job"],
)
def test_schemas_are_strict_enough_to_catch_a_typo(
    path: str, schema: str, where: list[str | int], typo: str
) -> None:
    """The checks above mean something: a misspelt key is rejected."""
    broken = _broken(load_yaml(ROOT / path), where, typo, {})
    assert schema_errors(broken, load_schema(schema)), f"{typo!r} in {path} was not rejected"


def test_vendored_schemas_match_the_shared_copies() -> None:
    """When the project's shared schema directory is next to the repo, the copies are equal."""
    shared = ROOT.parent / "shared" / "schemas"
    if not shared.is_dir():
        pytest.skip(f"no shared schema directory at {shared.name} next to the repository")
    for name in (SKAFFOLD_SCHEMA, KIND_SCHEMA, WORKFLOW_SCHEMA):
        assert filecmp.cmp(SCHEMAS / name, shared / name, shallow=False), f"{name} differs"


def test_every_yaml_config_names_its_schema_for_editors() -> None:
    for path in (Path("skaffold.yaml"), Path("e2e/kind-config.yaml")):
        first = (ROOT / path).read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
    assert "v4beta14.json" in (ROOT / "skaffold.yaml").read_text().splitlines()[0]
