"""Bearer-token auth on the task endpoints (``API_TOKEN``)."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
async def secured(settings: Settings):
    app = create_app(settings.model_copy(update={"api_token": SecretStr("s3cret-token")}))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiqstack") as http:
            yield http


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Basic s3cret-token", "Bearer s3cret-tokenX", "s3cret-token"],
)
async def test_wrong_or_missing_token_is_401(secured: httpx.AsyncClient, header) -> None:
    headers = {"authorization": header} if header else {}
    for method, path in [("GET", "/tasks"), ("POST", "/tasks/app.tasks.example:noop")]:
        response = await secured.request(method, path, headers=headers, json={})
        assert response.status_code == 401
        assert response.json() == {"detail": "missing or invalid bearer token"}
        assert response.headers["www-authenticate"] == "Bearer"


async def test_right_token_is_accepted(secured: httpx.AsyncClient) -> None:
    headers = {"authorization": "Bearer s3cret-token"}
    assert (await secured.get("/tasks", headers=headers)).status_code == 200
    response = await secured.post("/tasks/app.tasks.example:noop", headers=headers, json={})
    assert response.status_code == 202


async def test_probes_stay_open(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/livez")).status_code == 200
    assert (await secured.get("/readyz")).status_code == 200


async def test_metrics_are_not_on_the_api_port(secured: httpx.AsyncClient) -> None:
    # /metrics lives on METRICS_PORT only (tests/integration/test_http_edge.py)
    assert (await secured.get("/metrics")).status_code == 404


async def test_no_token_means_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/tasks")).status_code == 200
