"""The HTTP API against real NATS JetStream and Redis, with a real worker process."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from redis.asyncio import Redis

from app import metrics
from app.config import Settings
from tests.support.stack import Stack, metric_value

pytestmark = pytest.mark.integration

ADD = "app.tasks.example:add"


@pytest.fixture
def worker(stack: Stack):
    return stack.role("worker")


async def _poll(client: httpx.AsyncClient, task_id: str, timeout: float = 20) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] != "queued" or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.05)


async def test_dispatch_then_poll_status(client: httpx.AsyncClient, worker) -> None:
    response = await client.post(f"/tasks/{ADD}", json={"args": [2, 3]})
    assert response.status_code == 202
    body = response.json()
    assert body["task_name"] == ADD
    assert body["status_url"] == f"/tasks/{body['task_id']}"
    assert response.headers["location"] == body["status_url"]
    done = await _poll(client, body["task_id"])
    assert done == {
        "task_id": body["task_id"],
        "task_name": ADD,
        "queue": "default",
        "status": "success",
        "result": 5,
        "error": None,
        "execution_time": done["execution_time"],
        "eta": None,
        "attempt": None,
        "max_retries": None,
        "last_error": None,
        "progress": None,
        "cancel_requested": False,
    }


async def test_wait_returns_result(client: httpx.AsyncClient, worker) -> None:
    response = await client.post(
        "/tasks/app.tasks.example:example_task?wait=20", json={"kwargs": {"arg1": "a", "arg2": 7}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "Processed: a, 7"
    assert response.json()["status"] == "success"


async def test_wait_times_out_with_202(client: httpx.AsyncClient, worker) -> None:
    response = await client.post("/tasks/app.tasks.example:sleep_task?wait=0.2", json={"args": [2]})
    assert response.status_code == 202
    status = await client.get(response.json()["status_url"])
    assert status.json()["status"] == "queued"


async def test_error_is_captured(client: httpx.AsyncClient, worker) -> None:
    response = await client.post("/tasks/app.tasks.example:risky_task?wait=20", json={})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "error"
    assert body["result"] is None
    assert body["error"] == {"type": "ValueError", "message": "Something went wrong"}


async def test_process_endpoint_from_the_seed(client: httpx.AsyncClient, worker) -> None:
    response = await client.post("/process", params={"data": "hello"})
    assert response.status_code == 200
    done = await _poll(client, response.json()["task_id"])
    assert done["result"] == "Processed: hello, 5"


async def test_list_tasks_with_schemas(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks")
    assert response.status_code == 200
    tasks = {task["name"]: task for task in response.json()}
    assert {ADD, "app.tasks.example:example_task", "app.tasks.example:risky_task"} <= set(tasks)
    schema = tasks["app.tasks.example:example_task"]["parameters"]
    assert schema["required"] == ["arg1", "arg2"]
    assert schema["properties"]["arg1"]["type"] == "string"
    assert schema["properties"]["arg2"]["type"] == "integer"


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/tasks/no.such:task", {"args": []}, 404, "unknown task 'no.such:task'"),
        (f"/tasks/{ADD}", {"args": [1]}, 422, "missing a required argument: 'b'"),
        (f"/tasks/{ADD}", {"args": [1, "x"]}, 422, "b."),
        (f"/tasks/{ADD}", {"args": [1, 2, 3]}, 422, "too many positional arguments"),
        (f"/tasks/{ADD}", {"kwargs": {"a": 1, "b": 2, "c": 3}}, 422, "unexpected keyword"),
        (f"/tasks/{ADD}", {"args": "12"}, 422, "args"),
        (f"/tasks/{ADD}", {"params": [1, 2]}, 422, "params"),
        (f"/tasks/{ADD}", [1, 2], 422, "body must be"),
    ],
)
async def test_bad_dispatch_is_refused(
    client: httpx.AsyncClient, settings: Settings, path, body, status, fragment
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    await _assert_nothing_queued(settings)


async def _assert_nothing_queued(settings: Settings) -> None:
    import nats

    conn = await nats.connect(settings.nats_url)
    try:
        info = await conn.jetstream().stream_info(settings.nats_stream)
        assert info.state.messages == 0
    finally:
        await conn.close()


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/tasks/{ADD}", content=b'{"args": [1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "malformed JSON" in response.json()["detail"]


async def test_oversized_body_is_413(client: httpx.AsyncClient, settings: Settings) -> None:
    big = json.dumps({"args": ["x" * (settings.max_payload_bytes + 10)]}).encode()
    response = await client.post("/tasks/app.tasks.example:noop", content=big)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["detail"]

    async def chunks():
        for _ in range(settings.max_payload_bytes // 65536 + 2):
            yield b"x" * 65536

    chunked = await client.post("/tasks/app.tasks.example:noop", content=chunks())
    assert chunked.status_code == 413
    await _assert_nothing_queued(settings)


async def test_wait_over_sixty_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/tasks/{ADD}?wait=61", json={"args": [1, 2]})
    assert response.status_code == 422
    assert "wait" in response.json()["detail"]


async def test_unknown_task_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/0123456789abcdef")
    assert response.status_code == 404
    assert "never dispatched" in response.json()["detail"]


async def test_results_are_json_with_ttl(
    client: httpx.AsyncClient, worker, settings: Settings
) -> None:
    response = await client.post(f"/tasks/{ADD}?wait=20", json={"args": [20, 22]})
    task_id = response.json()["task_id"]
    redis = Redis.from_url(settings.redis_url)
    try:
        raw = await redis.get(f"{settings.result_key_prefix}:{task_id}")
        ttl = await redis.ttl(f"{settings.result_key_prefix}:{task_id}")
    finally:
        await redis.aclose()
    assert raw is not None
    assert json.loads(raw)["return_value"] == 42  # JSON, not pickle
    assert 0 < ttl <= settings.result_ttl_seconds


async def test_probes_and_metrics(client: httpx.AsyncClient, worker, settings: Settings) -> None:
    assert (await client.get("/livez")).text == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": "ok", "redis": "ok"}
    await client.post(f"/tasks/{ADD}?wait=20", json={"args": [1, 1]})
    page = metrics.api_exposition()[0].decode()  # served on METRICS_PORT by a real server
    assert metric_value(page, "kiqstack_tasks_dispatched_total", task_name=ADD) >= 1
    assert (
        metric_value(page, "kiqstack_http_requests_total", route="/tasks/{task_name}", status="200")
        >= 1
    )
    assert "kiqstack_http_request_duration_seconds_bucket" in page


async def test_readyz_is_503_while_draining(client: httpx.AsyncClient, app) -> None:
    app_state = app.state.kiq
    app_state.lifecycle.draining = True
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["server"] == "draining"
        assert (await client.get("/livez")).status_code == 200
    finally:
        app_state.lifecycle.draining = False


async def test_openapi_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/tasks/{task_name}" in spec["paths"]
