"""Shared fixtures: real NATS JetStream and Redis servers, per-test names, the app."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings, load_settings
from scripts.localinfra import Server, nats_server, redis_server
from tests.support.stack import Stack, unique_names


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    """A scratch directory for server data and logs, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="kiqstack-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nats(infra_dir: Path) -> Iterator[Server]:
    """A real ``nats-server -js`` for the whole session."""
    workdir = infra_dir / "nats"
    workdir.mkdir()
    server = nats_server(workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis(infra_dir: Path) -> Iterator[Server]:
    """A real ``redis-server`` for the whole session."""
    workdir = infra_dir / "redis"
    workdir.mkdir()
    server = redis_server(workdir).start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats: Server) -> str:
    """URL of the session NATS server."""
    return f"nats://{nats.host}:{nats.port}"


@pytest.fixture
def redis_url(redis: Server) -> str:
    """URL of the session Redis server."""
    return f"redis://{redis.host}:{redis.port}/0"


@pytest.fixture
def names() -> dict[str, str]:
    """Stream, subject, consumer and key names of this test only."""
    return unique_names()


@pytest.fixture
def env(nats_url: str, redis_url: str, names: dict[str, str]) -> dict[str, Any]:
    """Settings of this test, as environment variables."""
    return {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "INFO",
        "REDELIVERY_DELAY_SECONDS": "0.5",
        **names,
    }


@pytest.fixture
def settings(env: dict[str, Any]) -> Settings:
    """Settings of this test."""
    return load_settings(**{key.lower(): value for key, value in env.items()})


@pytest.fixture
def stack(env: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Real kiqstack processes for this test; their logs are printed when the test fails."""
    item = Stack(env, tmp_path)
    yield item
    item.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(item.dump_logs())  # noqa: T201


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Expose each phase's report on the test item (used to dump logs on failure)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """The API built for this test's settings."""
    from app.main import create_app

    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process (lifespan included)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiqstack") as http:
            yield http


@pytest.fixture(autouse=True)
def _no_stray_multiproc_dir() -> None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
