"""The HTTP API over a broker in memory and fakeredis: the edge, dispatch, status, probes.

The same API as tests/api (which runs it on real NATS and Redis with a worker process); here a
worker runs in this process when a test needs results.
"""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr
from starlette.requests import ClientDisconnect

from app import metrics
from app.broker import KiqBroker
from app.config import Settings
from app.main import HTTPMetricsMiddleware, create_app
from app.wire import MSG_ID_HEADER, TASK_NAME_HEADER
from tests.support.memory import MemoryTransport
from tests.support.stack import metric_value
from tests.support.worker import InProcessWorker

ADD = "app.tasks.example:add"


def api_metric(name: str, **labels: str) -> float:
    page = metrics.api_exposition()[0].decode()
    try:
        return metric_value(page, name, **labels)
    except KeyError:
        return 0.0


async def test_dispatch_publishes_and_records(
    client: httpx.AsyncClient, transport: MemoryTransport, settings: Settings
) -> None:
    response = await client.post(f"/tasks/{ADD}", json={"args": [2, 3]})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.headers["location"] == f"/tasks/{task_id}"
    [sent] = transport.published
    assert sent.subject == settings.nats_subject
    assert sent.headers[TASK_NAME_HEADER] == ADD
    assert sent.headers[MSG_ID_HEADER] == task_id
    assert sent.body["args"] == [2, 3]
    status = (await client.get(f"/tasks/{task_id}")).json()
    assert status["status"] == "queued"
    assert status["task_name"] == ADD


async def test_wait_returns_the_result(
    client: httpx.AsyncClient, worker: InProcessWorker, transport: MemoryTransport
) -> None:
    response = await client.post(f"/tasks/{ADD}?wait=10", json={"args": [2, 3]})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == 5
    assert response.json()["status"] == "success"
    await worker.drain()
    [msg] = [m for m in transport.client.sent if m[1] == b""]  # acked once, after the save
    assert msg


async def test_errors_are_reported(client: httpx.AsyncClient, worker: InProcessWorker) -> None:
    response = await client.post("/tasks/app.tasks.example:risky_task?wait=10", json={})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "error"
    assert body["error"] == {"type": "ValueError", "message": "Something went wrong"}


async def test_unknown_task_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/never-dispatched")
    assert response.status_code == 404
    assert "never-dispatched" in response.json()["detail"]


async def test_unknown_task_name_is_404(
    client: httpx.AsyncClient, transport: MemoryTransport
) -> None:
    response = await client.post("/tasks/no.such.task", json={})
    assert response.status_code == 404
    assert not transport.published


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"args": [1]}, 422),
        ({"args": [1, "x"]}, 422),
        ({"args": [True, 2]}, 422),
        ({"args": "no"}, 422),
        ({"kwargs": {"c": 1}, "args": [1, 2]}, 422),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_sent(
    client: httpx.AsyncClient, transport: MemoryTransport, body: object, status: int
) -> None:
    response = await client.post(f"/tasks/{ADD}", json=body)
    assert response.status_code == status, response.text
    assert not transport.published


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/tasks/{ADD}", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "malformed JSON" in response.json()["detail"]


async def test_non_json_body_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/tasks/{ADD}", content=b"args=1", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415


async def test_oversized_body_is_413(client: httpx.AsyncClient, settings: Settings) -> None:
    big = "x" * settings.max_payload_bytes
    response = await client.post(f"/tasks/{ADD}", json={"args": [big, 1]})
    assert response.status_code == 413


async def test_oversized_message_is_413_and_counted(
    client: httpx.AsyncClient, transport: MemoryTransport, settings: Settings
) -> None:
    """The body fits, the message (with its headers) does not: refused, nothing sent."""
    before = api_metric(
        "kiqstack_task_dispatch_errors_total", task_name="kiqstack.echo", reason="too_large"
    )
    value = "x" * (settings.max_payload_bytes - 40)
    response = await client.post("/tasks/kiqstack.echo", json={"args": [value]})
    assert response.status_code == 413, response.text
    assert not transport.published
    after = api_metric(
        "kiqstack_task_dispatch_errors_total", task_name="kiqstack.echo", reason="too_large"
    )
    assert after == before + 1


async def test_broker_failure_is_503(client: httpx.AsyncClient, transport: MemoryTransport):
    transport.fail_publish = ConnectionError("nats gone")
    response = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]})
    assert response.status_code == 503
    assert "nats gone" in response.json()["detail"]


async def test_unconfirmed_dispatch_is_503_and_says_so(
    client: httpx.AsyncClient, transport: MemoryTransport
) -> None:
    transport.fail_publish = TimeoutError()
    response = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]})
    assert response.status_code == 503
    assert "may or may not be queued" in response.json()["detail"]


async def test_seed_process_endpoint(client: httpx.AsyncClient, transport: MemoryTransport):
    response = await client.post("/process", params={"data": "abc"})
    assert response.status_code == 200
    [sent] = transport.published
    assert sent.body["args"] == ["abc", 3]


async def test_list_tasks(client: httpx.AsyncClient) -> None:
    tasks = {task["name"]: task for task in (await client.get("/tasks")).json()}
    assert {"kiqstack.ping", "kiqstack.echo", ADD} <= set(tasks)
    assert tasks[ADD]["parameters"]["required"] == ["a", "b"]


async def test_readyz_follows_the_transport_and_draining(
    client: httpx.AsyncClient, transport: MemoryTransport, app
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    transport.trouble = "stream or consumer missing"
    answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["nats"] == "stream or consumer missing"
    transport.trouble = None
    transport.connected = False
    assert (await client.get("/readyz")).json()["checks"]["nats"] == "disconnected"
    transport.connected = True
    app.state.kiq.lifecycle.draining = True
    answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["server"] == "draining"


async def test_readyz_reports_redis(client: httpx.AsyncClient, broker: KiqBroker) -> None:
    async def down() -> bool:
        raise ConnectionError("redis down")

    broker.results.ping = down  # type: ignore[method-assign]
    answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["redis"] == "unreachable: ConnectionError"


async def test_redis_failure_is_503(client: httpx.AsyncClient, broker: KiqBroker) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def down(task_id: str) -> None:
        raise RedisConnectionError("gone")

    broker.results.read_record = down  # type: ignore[assignment, method-assign]
    answer = await client.get("/tasks/some-id")
    assert answer.status_code == 503
    assert "result store (Redis) unavailable" in answer.json()["detail"]


async def test_lifespan_starts_and_stops_the_broker(
    settings: Settings, broker: KiqBroker, transport: MemoryTransport
) -> None:
    app = create_app(settings, broker=broker)
    async with LifespanManager(app):
        assert transport.started == 1
        assert app.state.kiq.lifecycle.broker_started
    assert transport.stopping
    assert not app.state.kiq.lifecycle.broker_started


# -- auth -----------------------------------------------------------------------------------------
@pytest.fixture
async def secured(settings: Settings, broker: KiqBroker):
    app = create_app(
        settings.model_copy(update={"api_token": SecretStr("s3cret-token")}), broker=broker
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiqstack") as http:
            yield http


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret-token", "s3cret-token"])
async def test_wrong_or_missing_token_is_401(secured: httpx.AsyncClient, header) -> None:
    headers = {"authorization": header} if header else {}
    response = await secured.get("/tasks", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_right_token_is_accepted_and_probes_stay_open(secured: httpx.AsyncClient) -> None:
    ok = await secured.get("/tasks", headers={"authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    assert (await secured.get("/livez")).status_code == 200


# -- the HTTP metrics middleware ------------------------------------------------------------------
async def test_requests_are_counted_by_route_template(client: httpx.AsyncClient) -> None:
    route = "/tasks/{task_id}"
    before = api_metric("kiqstack_http_requests_total", method="GET", route=route, status="404")
    await client.get("/tasks/one")
    await client.get("/tasks/two")
    after = api_metric("kiqstack_http_requests_total", method="GET", route=route, status="404")
    assert after == before + 2


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/nothing/here", "unmatched"),
        ("/livez", "/livez"),
        ("/openapi.json", "/openapi.json"),
        ("/docs", "/docs"),
        ("/redoc", "/redoc"),
    ],
)
async def test_route_labels(client: httpx.AsyncClient, path: str, route: str) -> None:
    before = api_metric("kiqstack_http_requests_total", method="GET", route=route)
    await client.get(path)
    assert api_metric("kiqstack_http_requests_total", method="GET", route=route) == before + 1


async def test_docs_assets_count_under_their_route(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    asset = next(part.split('"')[0] for part in page.split('src="')[1:] if "/docs/" in part)
    before = api_metric("kiqstack_http_requests_total", method="GET", status="200")
    unmatched = api_metric("kiqstack_http_requests_total", method="GET", route="unmatched")
    assert (await client.get(asset)).status_code == 200
    assert api_metric("kiqstack_http_requests_total", method="GET", status="200") == before + 1
    assert api_metric("kiqstack_http_requests_total", method="GET", route="unmatched") == unmatched


async def test_client_gone_before_its_body_is_499(app, caplog: pytest.LogCaptureFixture) -> None:
    """A client that disconnects while sending its body: counted as 499, one log line."""
    route = "/tasks/{task_name}"
    before = api_metric("kiqstack_http_requests_total", method="POST", route=route, status="499")
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/tasks/{ADD}",
        "raw_path": f"/tasks/{ADD}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"kiqstack")],
        "client": ("127.0.0.1", 1234),
        "server": ("kiqstack", 80),
        "state": {},
    }
    async with LifespanManager(app) as manager:
        await manager.app(scope, receive, send)
    assert sent[0]["status"] == 499
    after = api_metric("kiqstack_http_requests_total", method="POST", route=route, status="499")
    assert after == before + 1
    assert "client went away before its request was read (499)" in caplog.text
    assert ClientDisconnect  # the exception starlette raises for this


async def test_middleware_passes_other_scopes_through() -> None:
    seen = []

    async def inner(scope, receive, send) -> None:
        seen.append(scope["type"])

    await HTTPMetricsMiddleware(inner)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


@pytest.mark.parametrize(
    ("path", "location"),
    [("/tasks/", "/tasks"), ("/tasks/?x=1", "/tasks?x=1"), ("/livez/", "/livez")],
)
async def test_trailing_slash_redirect_is_relative(
    client: httpx.AsyncClient, path: str, location: str
) -> None:
    response = await client.get(path, headers={"host": "evil.example"})
    assert response.status_code == 307
    assert response.headers["location"] == location


@pytest.mark.parametrize("path", ["//evil.example/", "/nothing/", "/tasks//evil.example/"])
async def test_no_redirect_elsewhere(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_app_built_from_the_shared_broker_by_default(settings: Settings) -> None:
    from app.tasks.broker import broker as shared

    app = create_app(settings)
    assert app.state.kiq.broker is shared
    assert shared.settings is settings


async def test_a_dispatch_whose_record_fails_queues_nothing(
    client: httpx.AsyncClient, broker: KiqBroker, transport: MemoryTransport, caplog
) -> None:
    """Never a queued task that GET /tasks/{id} answers 404 for: no record, no message."""
    before = api_metric("kiqstack_task_dispatch_errors_total", task_name=ADD, reason="result_store")

    async def down(*_: object) -> None:
        raise ConnectionError("redis gone")

    broker.results.records.writer.write = down  # type: ignore[method-assign]
    response = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]})
    assert response.status_code == 503
    assert "nothing was queued" in response.json()["detail"]
    assert not transport.published
    assert "not queued: its dispatch record could not be saved" in caplog.text
    after = api_metric("kiqstack_task_dispatch_errors_total", task_name=ADD, reason="result_store")
    assert after == before + 1


async def test_a_failed_publish_forgets_its_record(
    client: httpx.AsyncClient, broker: KiqBroker, transport: MemoryTransport
) -> None:
    transport.fail_publish = ConnectionError("nats gone")
    response = await client.post(f"/tasks/{ADD}", json={"args": [1, 2]})
    assert response.status_code == 503
    keys = [k async for k in broker.results.redis.scan_iter(f"{broker.results.prefix}:*")]
    assert keys == []
