"""Bad input at the API edge: media type, non-finite numbers, strict types, redirects."""

from __future__ import annotations

import re

import httpx
import pytest

from app.config import Settings
from tests.api.test_tasks_api import _assert_nothing_queued

pytestmark = pytest.mark.integration

ADD = "/tasks/app.tasks.example:add"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"args": [1, 2]}'),  # a cross-site fetch() or form needs no preflight
        ("text/plain;charset=UTF-8", b'{"args": [1, 2]}'),
        ("application/x-www-form-urlencoded", b"args=1"),
        ("application/x-www-form-urlencoded", b""),  # a form with no fields
        ("multipart/form-data; boundary=x", b"--x--"),
        (None, b'{"args": [1, 2]}'),  # fetch() with a Blob body sends no Content-Type
    ],
)
async def test_non_json_body_is_415(
    client: httpx.AsyncClient, settings: Settings, content_type: str | None, body: bytes
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(ADD, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert "Content-Type" in response.json()["detail"]
    await _assert_nothing_queued(settings)


async def test_seed_process_endpoint_refuses_forms(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        "/process",
        params={"data": "x"},
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    await _assert_nothing_queued(settings)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.kiq+json",
    ],
)
async def test_json_media_types_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        ADD, content=b'{"args": [1, 2]}', headers={"content-type": content_type}
    )
    assert response.status_code == 202, response.text


async def test_empty_body_needs_no_content_type(client: httpx.AsyncClient) -> None:
    # curl -X POST .../noop: nothing to misread, no form involved
    assert (await client.post("/tasks/app.tasks.example:noop")).status_code == 202


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"args": [NaN, 1]}', "body.args.0"),
        (b'{"args": [1, Infinity]}', "body.args.1"),
        (b'{"args": [-Infinity, 1]}', "body.args.0"),
        (b'{"args": [1e309, 1]}', "body.args.0"),
        (b'{"args": [1, -1e400]}', "body.args.1"),
        (b'{"kwargs": {"a": 1, "b": [[{"x": 1e999}]]}}', "body.kwargs.b.0.0.x"),
    ],
)
async def test_non_finite_numbers_are_422(
    client: httpx.AsyncClient, settings: Settings, body: bytes, where: str
) -> None:
    response = await client.post(ADD, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(where)
    assert "NaN, Infinity" in response.json()["detail"]
    await _assert_nothing_queued(settings)


@pytest.mark.parametrize(
    ("path", "args", "fragment"),
    [
        (ADD, [True, 1], "a"),  # true is no number
        (ADD, ["7", 1], "a"),  # nor is "7"
        ("/tasks/app.tasks.example:example_task", ["x", 1.5], "arg2"),
        ("/tasks/app.tasks.example:example_task", ["x", "2"], "arg2"),
        ("/tasks/app.tasks.example:example_task", [1, 2], "arg1"),
        ("/tasks/app.tasks.example:sleep_task", [True], "seconds"),
        ("/tasks/app.tasks.example:sleep_task", [3600], "seconds"),  # bounded example
        ("/tasks/app.tasks.example:cpu_burn", [600], "seconds"),
    ],
)
async def test_strict_types_are_422(
    client: httpx.AsyncClient, settings: Settings, path: str, args: list, fragment: str
) -> None:
    response = await client.post(path, json={"args": args})
    assert response.status_code == 422, response.text
    assert re.search(rf": {fragment}[.:]", response.json()["detail"]), response.text
    await _assert_nothing_queued(settings)


async def test_an_int_is_a_float(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/app.tasks.example:sleep_task", json={"args": [0]})
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/tasks/", "/tasks"),
        ("/tasks/?x=1", "/tasks?x=1"),
        ("/tasks/abc/", "/tasks/abc"),
        ("/livez/", "/livez"),
    ],
)
async def test_trailing_slash_redirect_is_relative(
    client: httpx.AsyncClient, path: str, location: str
) -> None:
    response = await client.get(path, headers={"host": "evil.example"})
    assert response.status_code == 307
    assert response.headers["location"] == location  # never http://evil.example/...


@pytest.mark.parametrize("path", ["//evil.example/", "/nothing/", "/tasks//evil.example/"])
async def test_no_redirect_elsewhere(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_builtin_tasks_are_listed(client: httpx.AsyncClient) -> None:
    names = {task["name"] for task in (await client.get("/tasks")).json()}
    assert {"kiqstack.ping", "kiqstack.echo"} <= names
