"""The image itself: metadata, contents, user, and what it does with bad settings."""

from __future__ import annotations

import pytest

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
        "set -e; id -u; id -g; ls -A /app; stat -c %u /app /app/app; "
        "test ! -e /opt/venv/bin/pip && echo no-pip; "
        "python -c 'import sys; print(sys.prefix)'"
    )
    out = docker.run("run", "--rm", "--entrypoint", "sh", image.tag, "-c", script).stdout.split()
    uid, gid, *rest = out
    assert (uid, gid) == (UID, UID)
    # Only the entrypoint and the package: .dockerignore keeps tests, caches and .git out.
    assert rest[:2] == ["app", "docker-entrypoint.sh"]
    assert rest[2:4] == [UID, UID], "/app belongs to the app user (skaffold file sync)"
    assert rest[4:] == ["no-pip", "/opt/venv"]
    listing = docker.run(
        "run", "--rm", "--entrypoint", "find", image.tag, "/app", "-name", "__pycache__"
    ).stdout
    assert listing.strip() == "", "no byte-code from the build context"


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
    assert "usage: python -m app" in proc.stderr
