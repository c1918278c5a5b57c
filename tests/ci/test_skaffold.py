"""skaffold.yaml is consistent with the Dockerfile, the chart and itself.

Checks that a schema cannot make: the image templates name the real artifact (a misspelt name
renders `<no value>` silently and fails only at deploy time), the profiles' patches apply and stay
valid, the sync rule matches files and lands under the image's WORKDIR, and the port-forwards name
objects the chart really renders for this release.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.chartlib import render_objects, validate_schema
from tests.ci.conftest import (
    ROOT,
    effective_skaffold,
    find,
    image_env,
    load_schema,
    load_yaml,
    release_values,
    sanitize,
    schema_errors,
    skaffold_doc,
)

PROFILES = [None, "dev", "ci"]
PROFILE_IDS = ["base", "dev", "ci"]
# What a locally built, not pushed artifact gets as tag (skaffold tags it with the image ID).
FAKE_TAG = "3f0c1a6b9d2e4f5a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a"
K8S_VERSION = "1.36.0"  # kind v0.32.0's node image is v1.36.1


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return skaffold_doc()


@pytest.fixture(scope="module")
def release(doc: dict[str, Any]) -> dict[str, Any]:
    releases = doc["deploy"]["helm"]["releases"]
    assert len(releases) == 1, "one Helm release: the kiqstack chart"
    release: dict[str, Any] = releases[0]
    return release


def test_newest_schema_version(doc: dict[str, Any]) -> None:
    # The schema does not pin apiVersion (it is a plain string), so check it here.
    assert doc["apiVersion"] == "skaffold/v4beta14"
    assert doc["kind"] == "Config"


def test_one_artifact_built_from_the_dockerfile(doc: dict[str, Any]) -> None:
    (artifact,) = doc["build"]["artifacts"]
    assert artifact["image"] == "kiqstack"
    assert artifact.get("context", ".") == "."
    assert (ROOT / artifact["docker"]["dockerfile"]).is_file()
    assert doc["build"]["local"]["push"] is False, "images are loaded into the local cluster"
    assert "inputDigest" in doc["build"]["tagPolicy"], "the tag must change with the inputs"


def test_build_args_are_declared_in_the_dockerfile(doc: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)", dockerfile, re.MULTILINE))
    for artifact in doc["build"]["artifacts"]:
        for arg in artifact["docker"].get("buildArgs", {}):
            assert arg in declared, f"build arg {arg} is not an ARG of the Dockerfile"
    extras = doc["build"]["artifacts"][0]["docker"]["buildArgs"]["EXTRAS"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf"^{extras}\s*=", pyproject, re.MULTILINE), f"no [{extras}] extra"


def test_image_templates_name_the_real_artifact(
    doc: dict[str, Any], release: dict[str, Any]
) -> None:
    artifacts = {sanitize(a["image"]) for a in doc["build"]["artifacts"]}
    templates = release["setValueTemplates"]
    assert set(templates) >= {"image.repository", "image.tag"}
    for key, template in templates.items():
        for var in re.findall(r"\{\{\s*\.(IMAGE_[A-Z_]+?)_([A-Za-z0-9_]+)\s*\}\}", template):
            assert var[1] in artifacts, f"{key}: {{{{.{var[0]}_{var[1]}}}}} names no artifact"
    env = image_env(doc, FAKE_TAG)
    values = release_values(doc, FAKE_TAG)
    assert "<no value>" not in repr(values)
    assert values["image"]["repository"] == env["IMAGE_REPO_kiqstack"] == "kiqstack"
    assert values["image"]["tag"] == FAKE_TAG
    assert values["image"]["pullPolicy"] == "IfNotPresent"


def test_sanitize_matches_skaffold() -> None:
    assert sanitize("ghcr.io/acme/my-app:v1") == "ghcr_io_acme_my_app_v1"


def test_release_installs_the_chart(release: dict[str, Any]) -> None:
    assert release["name"] == "kiqstack"
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    assert load_yaml(ROOT / release["chartPath"] / "Chart.yaml")["name"] == "kiqstack"
    assert release["namespace"] == "kiqstack"
    assert release["createNamespace"] is True
    assert release["wait"] is True
    # No charts/*.tgz is vendored, so skaffold must run `helm dependency build` first.
    assert release.get("skipBuildDependencies", False) is False
    for path in release["valuesFiles"]:
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_profile_patches_apply_and_stay_valid(profile: str | None) -> None:
    patched = effective_skaffold(profile)
    errors = schema_errors(patched, load_schema("skaffold-schema-v4beta14.json"))
    assert not errors, f"profile {profile}: {errors}"
    (release,) = patched["deploy"]["helm"]["releases"]
    for path in release["valuesFiles"]:
        assert (ROOT / path).is_file(), f"profile {profile}: {path} missing"


def test_profiles_are_activated_as_documented(doc: dict[str, Any]) -> None:
    profiles = {p["name"]: p for p in doc["profiles"]}
    assert {"command": "dev"} in profiles["dev"]["activation"]
    assert {"env": "CI=true"} in profiles["ci"]["activation"]
    for profile in profiles.values():
        # Whole-list replacement of build/deploy would drop the base config: patches only.
        assert not {"build", "deploy"} & set(profile), f"{profile['name']} replaces lists"


def test_dev_profile_syncs_python_files_into_the_workdir() -> None:
    dev = effective_skaffold("dev")
    (artifact,) = dev["build"]["artifacts"]
    (rule,) = artifact["sync"]["manual"]
    assert rule["src"] == "app/**/*.py"
    matches = glob.glob(rule["src"], root_dir=ROOT, recursive=True)
    assert "app/main.py" in matches, "the sync glob matches no application file"
    # skaffold keeps the path below the context: app/main.py -> <dest>/app/main.py.
    dockerfile = (ROOT / "Dockerfile").read_text()
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.MULTILINE)
    assert workdirs[-1] == "/app"
    dest = PurePosixPath(workdirs[-1]) / rule["dest"]  # an absolute dest wins
    assert str(dest / "app/main.py") == "/app/app/main.py"
    assert "/app/app/" in dockerfile, "the image must hold app/ at /app/app"
    assert re.search(r"install -d -o 10001 -g 10001 .*/app\b", dockerfile), "/app owned by 10001"
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)


def test_ci_profile_builds_the_production_image() -> None:
    ci = effective_skaffold("ci")
    assert "buildArgs" not in ci["build"]["artifacts"][0]["docker"]
    assert "sync" not in ci["build"]["artifacts"][0]
    assert ci["deploy"]["helm"]["releases"][0]["valuesFiles"] == ["e2e/values.yaml"]


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_port_forwards_name_rendered_objects(chart: Path, profile: str | None) -> None:
    doc = effective_skaffold(profile)
    (release,) = doc["deploy"]["helm"]["releases"]
    objects = render_objects(
        chart, release_values(doc, FAKE_TAG), name=release["name"], namespace=release["namespace"]
    )
    assert doc["portForward"], "no port-forward"
    forwarded = set()
    for forward in doc["portForward"]:
        assert forward["namespace"] == release["namespace"]
        kind = {"service": "Service", "deployment": "Deployment"}[forward["resourceType"]]
        obj = find(objects, kind, forward["resourceName"])
        if kind == "Service":
            ports = {p["port"]: p["name"] for p in obj["spec"]["ports"]}
        else:
            ports = {
                p["containerPort"]: p["name"]
                for c in obj["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
        assert forward["port"] in ports, f"{kind}/{forward['resourceName']} has ports {ports}"
        forwarded.add((forward["resourceName"], ports[forward["port"]]))
    assert doc["portForward"][0]["resourceName"] == "kiqstack-server"
    assert doc["portForward"][0]["port"] == 8000
    local = [f["localPort"] for f in doc["portForward"]]
    assert len(local) == len(set(local)), f"local ports collide: {local}"
    # the API, and /metrics of both roles (never on the API port)
    assert forwarded == {
        ("kiqstack-server", "http"),
        ("kiqstack-server", "http-metrics"),
        ("kiqstack-worker", "http-metrics"),
    }


def _containers(objects: list[dict[str, Any]], deployment: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = find(objects, "Deployment", deployment)["spec"]["template"][
        "spec"
    ]["containers"]
    return containers


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
def test_release_renders_valid_objects_with_the_built_image(
    chart: Path, profile: str | None
) -> None:
    doc = effective_skaffold(profile)
    values = release_values(doc, FAKE_TAG)
    validate_schema(chart, values)
    objects = render_objects(chart, values, name="kiqstack", namespace="kiqstack")
    for obj in objects:
        if obj["apiVersion"].endswith(".coreos.com/v1") or obj["apiVersion"].startswith("keda.sh/"):
            continue  # CRD kinds; the chart tests check those structurally
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    for deployment in ("kiqstack-server", "kiqstack-worker"):
        for container in _containers(objects, deployment):
            assert container["image"] == f"kiqstack:{FAKE_TAG}"
            assert container["imagePullPolicy"] == "IfNotPresent"
    config = find(objects, "ConfigMap", "kiqstack")["data"]
    rofs = {
        c["securityContext"]["readOnlyRootFilesystem"]
        for d in ("kiqstack-server", "kiqstack-worker")
        for c in _containers(objects, d)
    }
    if profile == "ci":
        assert config["RELOAD"] == "false"
        assert rofs == {True}
        hpa = find(objects, "HorizontalPodAutoscaler", "kiqstack-worker")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "kiqstack-worker"
    else:
        # skaffold's own values (dev loop): reload on, /app writable for file sync.
        assert config["RELOAD"] == "true"
        assert rofs == {False}
