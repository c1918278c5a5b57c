"""The image itself: metadata, contents, user, and what it does with bad settings."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.container.conftest import ROOT

pytestmark = pytest.mark.container

UID = "10001"
# The layers kiqstack adds on top of the base (venv + app + user). python:3.12-slim-bookworm is
# about 125 MB, so this keeps the default-base image under the 200 MB target.
MAX_ADDED_MB = 70


def test_image_config(docker, image):
    config = docker.inspect(image.tag)["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["WorkingDir"] == "/app"
    assert config["Entrypoint"] == ["/app/docker-entrypoint.sh"], "exec form, no shell wrapper"
    assert not config.get("Cmd")
    assert set(config["ExposedPorts"]) == {"8000/tcp", "9000/tcp"}
    assert "PATH=/opt/venv/bin:" in " ".join(config["Env"])
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == image.version
    assert labels["org.opencontainers.image.revision"] == image.revision
    assert "org.opencontainers.image.source" in labels


def test_image_size(docker, image, observe):
    size = docker.inspect(image.tag)["Size"]
    base = docker.inspect(image.base)["Size"]
    added_mb = (size - base) / 1e6
    observe(
        f"image {image.tag}: {size / 1e6:.0f} MB, base {base / 1e6:.0f} MB, added {added_mb:.0f} MB"
    )
    assert added_mb <= MAX_ADDED_MB


def test_image_contents(docker, image):
    script = (
        "set -e; id -u; id -g; ls -A /app; stat -c %u /app /app/app /opt/venv; "
        "test -x /opt/venv/bin/pip && echo pip; test ! -e /opt/venv/bin/uv && echo no-uv; "
        "python -c 'import sys; print(sys.prefix)'"
    )
    out = docker.run("run", "--rm", "--entrypoint", "sh", image.tag, "-c", script).stdout.split()
    uid, gid, *rest = out
    assert (uid, gid) == (UID, UID)
    # Only the entrypoint and the package: .dockerignore keeps tests, caches and .git out.
    assert rest[:2] == ["app", "docker-entrypoint.sh"]
    assert rest[2:4] == [UID, UID], "/app belongs to the app user (skaffold file sync)"
    assert rest[4] == "0", "the venv belongs to root: the app user cannot change its packages"
    # pip for images built FROM this one; uv stays in the build stage.
    assert rest[5:] == ["pip", "no-uv", "/opt/venv"]
    listing = docker.run(
        "run", "--rm", "--entrypoint", "find", image.tag, "/app", "-name", "__pycache__"
    ).stdout
    assert listing.strip() == "", "no byte-code from the build context"


def _locked_versions(*, extras: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> dict:
    """Name -> version of what uv.lock installs for kiqstack with these extras/groups."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    project = packages["kiqstack"]
    wanted = [d["name"] for d in project["dependencies"]]
    for extra in extras:
        wanted += [d["name"] for d in project["optional-dependencies"][extra]]
    for group in groups:
        wanted += [d["name"] for d in project["dev-dependencies"][group]]
    versions = {"kiqstack": project["version"]}
    while wanted:
        name = wanted.pop()
        if name not in versions:
            versions[name] = packages[name]["version"]
            wanted += [d["name"] for d in packages[name].get("dependencies", [])]
    return versions


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_installs_exactly_the_locked_versions(docker, image):
    """Every distribution in the venv is in uv.lock, at the locked version."""
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = docker.run("run", "--rm", "--entrypoint", "python", image.tag, "-c", script).stdout
    installed = {_normalize(name): version for name, version in json.loads(out).items()}
    locked = _locked_versions(groups=("image",))
    # Locked for other platforms/Pythons only (markers) may be absent; never the other way round.
    extra = set(installed) - set(locked)
    assert not extra, f"installed but not locked: {extra}"
    wrong = {n: (v, locked[n]) for n, v in installed.items() if locked[n] != v}
    assert not wrong, f"installed != locked: {wrong}"
    for required in ("fastapi", "starlette", "pydantic-core", "anyio", "nats-py", "pip"):
        assert required in installed


def test_constraints_for_derived_images_match_the_lock(docker, image):
    """PIP_CONSTRAINT names a file with the locked runtime versions (for FROM-kiqstack builds)."""
    config = docker.inspect(image.tag)["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    path = env["PIP_CONSTRAINT"]
    text = docker.run("run", "--rm", "--entrypoint", "cat", image.tag, path).stdout
    pins = {
        _normalize(name): version
        for name, version in (
            line.split(";")[0].strip().split("==") for line in text.splitlines() if "==" in line
        )
    }
    locked = _locked_versions()
    del locked["kiqstack"]
    assert pins == locked, "the constraints are the lock's runtime packages (pip not constrained)"


def test_project_is_installed_with_real_metadata(docker, image):
    """uv installed kiqstack from the project (no hand-written dist-info), console script too."""
    out = docker.run("run", "--rm", "--entrypoint", "kiqstack", image.tag, "--version").stdout
    assert out.strip() == f"kiqstack {image.version}"
    script = (
        "import importlib.metadata as m, app; d = m.distribution('kiqstack'); "
        "print(d.read_text('INSTALLER').strip(), d.metadata['License-Expression'], "
        "len(d.requires), app.__file__)"
    )
    out = docker.run("run", "--rm", "--entrypoint", "python", image.tag, "-c", script).stdout
    installer, license_expression, requires, module = out.split()
    assert installer == "uv"
    assert license_expression == "Apache-2.0"
    assert int(requires) > 10
    assert module == "/app/app/__init__.py", "the code lives in /app/app (skaffold file sync)"


def test_version_from_package_metadata(bare_containers, image):
    proc = bare_containers.run_once("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"kiqstack {image.version}"


def test_help_lists_roles(bare_containers):
    proc = bare_containers.run_once("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("server", "worker", "both", "dlq"):
        assert command in proc.stdout


def test_unknown_run_mode_exits_non_zero_listing_valid_modes(bare_containers):
    proc = bare_containers.run_once(env={"RUN_MODE": "bogus"}, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "RUN_MODE" in output
    for mode in ("server", "worker", "both"):
        assert mode in output, output


def test_entrypoint_passes_arguments_to_python_m_app(bare_containers):
    proc = bare_containers.run_once("no-such-command")
    assert proc.returncode == 2
    assert re.search(r"usage: (python -m app|kiqstack)", proc.stderr), proc.stderr
