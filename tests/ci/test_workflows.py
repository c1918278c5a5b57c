"""GitHub workflows: pinned actions, least privilege, pinned kind and Helm, make entry points."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.ci.conftest import ROOT, load_yaml

WORKFLOWS = {p.name: p for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
# Tagged commits of each action's repository (`git for-each-ref refs/tags` of the upstream repos).
KNOWN_PINS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "actions/setup-python": ("ece7cb06caefa5fff74198d8649806c4678c61a1", "v6.3.0"),
    "azure/setup-helm": ("9bc31f4ebc9c6b171d7bfbaa5d006ae7abdb4310", "v5.0.1"),
    "helm/kind-action": ("ef37e7f390d99f746eb8b610417061a60e82a6cc", "v1.14.0"),
    "actions/upload-artifact": ("bbbca2ddaa5d8feaa63e36b76fdaad77386f024f", "v7.0.0"),
}


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


@pytest.fixture(scope="module", params=sorted(WORKFLOWS))
def workflow(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], str]:
    path = WORKFLOWS[request.param]
    return request.param, load_yaml(path), path.read_text()


def test_actions_are_pinned_by_commit_sha(workflow: tuple[str, dict[str, Any], str]) -> None:
    name, doc, text = workflow
    for step in _steps(doc):
        uses = step.get("uses")
        if uses is None or uses.startswith("./"):
            continue
        assert SHA_PIN.match(uses), f"{name}: {uses} is not pinned to a full commit SHA"
        action, sha = uses.split("@")
        assert action in KNOWN_PINS, f"{name}: {action} is not a reviewed action"
        assert sha == KNOWN_PINS[action][0], f"{name}: {action}@{sha} is not the reviewed commit"
        # The version comment keeps the pin readable (and lets Dependabot update it).
        assert re.search(rf"{re.escape(uses)} # {re.escape(KNOWN_PINS[action][1])}$", text, re.M)


def test_least_privilege(workflow: tuple[str, dict[str, Any], str]) -> None:
    name, doc, _ = workflow
    assert doc["permissions"] == {"contents": "read"}, f"{name}: top-level permissions"
    for job_name, job in doc["jobs"].items():
        assert job.get("permissions", {}) in ({}, {"contents": "read"}), f"{name}:{job_name}"
        assert "timeout-minutes" in job, f"{name}:{job_name} has no timeout"
    for step in _steps(doc):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False, f"{name}: token left in .git"
    assert "pull_request_target" not in doc["on"], f"{name}: runs untrusted code with secrets"


def test_helm_is_pinned(workflow: tuple[str, dict[str, Any], str]) -> None:
    name, doc, _ = workflow
    assert re.fullmatch(r"v\d+\.\d+\.\d+", doc["env"]["HELM_VERSION"]), name
    for step in _steps(doc):
        if step.get("uses", "").startswith("azure/setup-helm@"):
            assert step["with"]["version"] == "${{ env.HELM_VERSION }}", name


def test_e2e_runs_make_e2e_on_pinned_kind() -> None:
    doc = load_yaml(WORKFLOWS["e2e.yml"])
    kind_config = load_yaml(ROOT / "e2e" / "kind-config.yaml")
    assert doc["env"]["KIND_VERSION"] == "v0.32.0"
    assert doc["env"]["KIND_CLUSTER"] == kind_config["name"], "run.sh reuses the action's cluster"
    kind_steps = [s for s in _steps(doc) if s.get("uses", "").startswith("helm/kind-action@")]
    assert len(kind_steps) == 2
    for step in kind_steps:
        assert step["with"]["version"] == "${{ env.KIND_VERSION }}"
        assert step["with"]["cluster_name"] == "${{ env.KIND_CLUSTER }}"
        assert step["with"]["config"] == "e2e/kind-config.yaml"
        # A registry makes skaffold push instead of `kind load` (local-registry-hosting ConfigMap).
        assert "registry" not in step["with"]
    job = doc["jobs"]["kind"]
    assert any(s.get("run") == "make e2e" for s in job["steps"])
    uploads = [s for s in _steps(doc) if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(uploads) == 2
    assert all(s["if"] == "failure()" for s in uploads), "logs are uploaded on failure"


def test_ci_covers_lint_tests_and_chart() -> None:
    doc = load_yaml(WORKFLOWS["ci.yml"])
    runs = "\n".join(s.get("run", "") for s in _steps(doc))
    for command in (
        "make lint",
        "make test",
        "helm lint chart",
        "kubernetes-validate",
        "make ci-config-test",
    ):
        assert command in runs, f"ci.yml never runs {command}"


def test_make_targets_used_by_workflows_exist() -> None:
    makefiles = [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))]
    defined = {
        m.group(1)
        for path in makefiles
        for m in re.finditer(r"^([a-zA-Z0-9_-]+):", path.read_text(), re.MULTILINE)
    }
    for name, path in WORKFLOWS.items():
        for target in re.findall(r"\bmake ([a-z0-9-]+)", path.read_text()):
            assert target in defined, f"{name} runs `make {target}`, which no makefile defines"
