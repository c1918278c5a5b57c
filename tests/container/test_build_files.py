"""The image's build files agree with pyproject.toml (static checks: no Docker engine needed)."""

from __future__ import annotations

import re
import tomllib

from tests.container.conftest import ROOT


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_uv_is_the_locked_uv():
    dev = _pyproject()["project"]["optional-dependencies"]["dev"]
    pinned = next(req.split("==", 1)[1] for req in dev if req.startswith("uv=="))
    match = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile declares ARG UV_VERSION=<version>"
    assert match.group(1) == pinned


def test_dockerfile_installs_from_the_lock_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    syncs = re.findall(r"/opt/uv/bin/uv sync ([^\\\n]*)", dockerfile)
    assert len(syncs) == 2, syncs
    assert all("--frozen" in args and "--no-dev" in args for args in syncs), syncs
    assert "pip install -r" not in dockerfile
    assert "dist-info" not in dockerfile, "the project is installed, not faked"


def test_build_context_holds_what_the_dockerfile_copies():
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    sources = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile, re.MULTILINE)
    sources += re.findall(r"type=bind,source=([^,\s]+)", dockerfile)
    used = {word.rstrip("/") for line in sources for word in line.split()}
    assert used == allowed
