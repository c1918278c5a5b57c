"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.localinfra import Server, nats_server
from tests.support.stack import Stack


@pytest.fixture
def own_nats(stack: Stack, tmp_path: Path) -> Iterator[Server]:
    """A nats-server of this test only (to stop, restart or empty), used by its stack."""
    workdir = tmp_path / "own-nats"
    workdir.mkdir()
    server = nats_server(workdir).start()
    stack.base_env["NATS_URL"] = f"nats://{server.host}:{server.port}"
    yield server
    server.stop()
