"""The API's HTTP edge as a real uvicorn server process, attacked through real sockets.

Slow clients are cut off, floods of idle connections leave the metrics port answering, oversized
headers get 431 with bounded memory, a vanished client is a 499, and /metrics has its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from scripts.localinfra import nats_server, redis_server
from tests.support.stack import Role, Stack, metric_value, poll

pytestmark = [pytest.mark.integration, pytest.mark.process]

GIVE_UP = 60.0  # seconds a test waits for the server to act before failing (not a speed check)


def metrics_url(role: Role, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or role.metrics_port}"


def api_page(role: Role, port: int | None = None) -> str:
    answer = httpx.get(f"{metrics_url(role, port)}/metrics", timeout=10)
    assert answer.status_code == 200
    return answer.text


def rss_kib(role: Role) -> int:
    assert role.process is not None
    with open(f"/proc/{role.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def start_with_fd_limit(role: Role, nofile: int) -> Role:
    """Start a role whose process may open at most ``nofile`` files (``ulimit -n``)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with role.log_path.open("ab") as log:
        role.process = subprocess.Popen(
            [sys.executable, "-m", "app", role.role],
            env=role.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit,  # only setrlimit, before exec
        )
    role.wait_ready()
    return role


async def closed_by_server(port: int, first: bytes, trickle: bytes, every: float) -> bytes:
    """Send ``first``, then ``trickle`` every ``every`` seconds, until the server closes.

    :return: what the server answered before closing (possibly nothing).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(first)
        await writer.drain()
        async with asyncio.timeout(GIVE_UP):
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), every)
                except TimeoutError:
                    writer.write(trickle)  # still slowly "sending headers"
                    await writer.drain()
                    continue
                if not chunk:
                    return answer
                answer += chunk
    except ConnectionError:
        return answer
    finally:
        writer.close()


@pytest.fixture
def server(stack: Stack) -> Role:
    return stack.role(
        "server",
        HTTP_HEADER_TIMEOUT_SECONDS="2",
        HTTP_BODY_TIMEOUT_SECONDS="2",
    )


def test_metrics_have_their_own_port(server: Role) -> None:
    api = server.probe_url
    assert httpx.get(f"{api}/metrics").status_code == 404  # never on the API port (Ingress)
    assert httpx.post(f"{api}/tasks/kiqstack.ping", timeout=10).status_code == 202
    page = api_page(server)
    assert metric_value(page, "kiqstack_tasks_dispatched_total", task_name="kiqstack.ping") == 1
    assert metric_value(page, "kiqstack_http_requests_total", status="202") >= 1
    probes = metrics_url(server)
    assert httpx.get(f"{probes}/livez").status_code == 200
    ready = httpx.get(f"{probes}/readyz")
    assert ready.status_code == 200
    assert ready.json() == httpx.get(f"{api}/readyz").json()  # the same readiness
    assert f"server probes and metrics on http://127.0.0.1:{server.metrics_port}" in server.logs()


def test_both_mode_gives_the_server_metrics_port_plus_one(stack: Stack) -> None:
    both = stack.role("both")
    server_port = both.metrics_port + 1
    answer = httpx.post(f"{both.probe_url}/tasks/kiqstack.ping?wait=20", timeout=30)
    assert answer.json()["result"] == "pong"
    worker_page = httpx.get(f"{metrics_url(both)}/metrics", timeout=10).text
    assert metric_value(worker_page, "kiqstack_tasks_succeeded_total", task_name="kiqstack.ping")
    server_page = api_page(both, server_port)
    assert metric_value(server_page, "kiqstack_tasks_dispatched_total", task_name="kiqstack.ping")
    assert httpx.get(f"{metrics_url(both, server_port)}/readyz").status_code == 200
    assert (
        f"server probes and metrics on http://127.0.0.1:{server_port} (RUN_MODE=both: "
        "METRICS_PORT + 1; the worker has METRICS_PORT)" in both.logs()
    )


async def test_slowloris_clients_are_cut_off(server: Role) -> None:
    request = b"GET /livez HTTP/1.1\r\nHost: kiqstack\r\n"
    clients = [
        closed_by_server(server.port, request, b"X-Slow: 1\r\n", every=0.5) for _ in range(90)
    ]
    answers = await asyncio.gather(*clients)  # each returns only once the server closed it
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), set(answers)
    page = api_page(server)
    assert (
        metric_value(page, "kiqstack_http_connections_closed_total", reason="header_timeout") == 90
    )
    assert "request headers not complete within 2s" in server.logs()
    assert server.logs().count("closed connection from") < 90  # the log is not flooded


async def test_silent_connection_is_closed_without_an_answer(server: Role) -> None:
    assert await closed_by_server(server.port, b"", b"", every=GIVE_UP) == b""


async def test_slow_body_is_cut_off(server: Role) -> None:
    head = (
        b"POST /tasks/kiqstack.echo HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    answer = await closed_by_server(server.port, head, b" ", every=0.5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "detail": "request not received within 2s"
    }
    page = api_page(server)
    assert metric_value(page, "kiqstack_http_connections_closed_total", reason="body_timeout") == 1


def test_client_gone_mid_body_is_499_with_one_log_line(server: Role) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /tasks/kiqstack.echo HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"args": ['
        )
    poll(
        lambda: (
            metric_value(api_page(server), "kiqstack_http_requests_total", status="499")
            if 'status="499"' in api_page(server)
            else None
        ),
        GIVE_UP,
        server.logs,
    )
    logs = server.logs()
    assert logs.count("client went away before its request was read (499)") == 1
    assert "Traceback" not in logs
    assert 'status="500"' not in api_page(server)


def test_oversized_headers_are_431_and_memory_stays_bounded(server: Role) -> None:
    before = rss_kib(server)

    def send_huge_header() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GIVE_UP) as sock:
            with contextlib.suppress(ConnectionError):  # refused halfway: no longer read
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: k\r\nX-Big: " + b"a" * 5_000_000)
            try:
                return sock.recv(65536)
            except ConnectionError:
                return b""

    async def twenty() -> list[bytes]:
        return await asyncio.gather(*(asyncio.to_thread(send_huge_header) for _ in range(20)))

    answers = asyncio.run(twenty())
    assert all(a == b"" or a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert any(a.startswith(b"HTTP/1.1 431 ") for a in answers)
    grown = rss_kib(server) - before
    assert grown < 40 * 1024, f"RSS grew by {grown} KiB for 20 x 5 MB of headers"
    page = api_page(server)
    assert (
        metric_value(page, "kiqstack_http_connections_closed_total", reason="header_too_large")
        == 20
    )
    assert httpx.get(f"{server.probe_url}/livez").status_code == 200


def test_too_many_header_fields_are_431(server: Role) -> None:
    headers = {f"x-h{i}": "v" for i in range(150)}
    answer = httpx.get(f"{server.probe_url}/livez", headers=headers)
    assert answer.status_code == 431
    assert answer.json() == {"detail": "more than 100 header fields"}
    assert httpx.get(f"{server.probe_url}/livez").status_code == 200


def test_probes_answer_while_idle_connections_flood_the_api(stack: Stack) -> None:
    role = stack.role("server", start=False, HTTP_HEADER_TIMEOUT_SECONDS="3")
    start_with_fd_limit(role, 256)  # the review's setup: 260 idle sockets used to kill /livez
    assert "HTTP_MAX_CONNECTIONS lowered from 2000 to 128" in role.logs()
    flood = []
    try:
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", role.port), timeout=GIVE_UP))
        for _ in range(20):  # kubelet keeps probing; every probe must be answered
            assert httpx.get(f"{metrics_url(role)}/livez", timeout=GIVE_UP).status_code == 200
            assert httpx.get(f"{metrics_url(role)}/readyz", timeout=GIVE_UP).status_code == 200
    finally:
        for sock in flood:
            sock.close()
    page = api_page(role)
    refused = metric_value(page, "kiqstack_http_connections_closed_total", reason="max_connections")
    assert refused >= 300 - 128
    # The API itself serves again as soon as the flood is gone.
    poll(
        lambda: (
            True
            if httpx.get(f"{role.probe_url}/livez", timeout=GIVE_UP).status_code == 200
            else None
        ),
        GIVE_UP,
        role.logs,
    )
    assert role.process is not None
    assert role.process.poll() is None


@pytest.fixture
def authenticated_infra(infra_dir, request) -> Iterator[tuple[str, str]]:
    """A NATS server with a user and password, a Redis with a password: their URLs."""
    workdir = infra_dir / f"auth-{request.node.name}"
    workdir.mkdir()
    nats = nats_server(workdir)
    nats.argv += ["--user", "kiq", "--pass", NATS_PASSWORD]
    redis = redis_server(workdir)
    redis.argv += ["--requirepass", REDIS_PASSWORD]
    nats.start()
    redis.start()
    yield (
        f"nats://kiq:{NATS_PASSWORD}@127.0.0.1:{nats.port}",
        f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0",
    )
    nats.stop()
    redis.stop()


NATS_PASSWORD = "nats-Secret-81f2"  # noqa: S105 - test servers only
REDIS_PASSWORD = "redis-Secret-5c0d"  # noqa: S105
API_TOKEN = "api-Secret-9e47"  # noqa: S105


def test_secrets_from_files_and_never_in_messages(
    stack: Stack, authenticated_infra: tuple[str, str], tmp_path
) -> None:
    nats_url, redis_url = authenticated_infra
    files = {}
    for name, value in (("API_TOKEN", API_TOKEN), ("NATS_URL", nats_url), ("REDIS_URL", redis_url)):
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as `kubectl create secret --from-file` would
        files[f"{name}_FILE"] = str(path)
    unset = {"NATS_URL": "", "REDIS_URL": ""}  # empty counts as unset: the files are the source
    server = stack.role("server", **unset, **files)
    worker = stack.role("worker", **unset, **files)
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    assert httpx.post(f"{server.probe_url}/tasks/kiqstack.ping", timeout=10).status_code == 401
    answer = httpx.post(
        f"{server.probe_url}/tasks/kiqstack.echo?wait=20",
        json={"args": ["hello"]},
        headers=token,
        timeout=30,
    )
    assert answer.json()["result"] == "hello"
    shown = [
        server.logs(),
        worker.logs(),
        httpx.get(f"{server.probe_url}/readyz").text,
        httpx.get(f"{metrics_url(server)}/readyz").text,
        api_page(server),
        httpx.get(f"{server.probe_url}/openapi.json").text,
    ]
    for text in shown:
        for secret in (NATS_PASSWORD, REDIS_PASSWORD, API_TOKEN):
            assert secret not in text


def test_secret_file_errors_stop_the_process_with_a_message(stack: Stack, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken")
    server = stack.role("server", start=False, API_TOKEN="x", API_TOKEN_FILE=str(token))  # noqa: S106
    server.start(wait_ready=False)
    assert server.wait(30) == 2
    assert "API_TOKEN and API_TOKEN_FILE are both set; set only one of them" in server.logs()
    missing = stack.role("server", start=False, REDIS_URL="", REDIS_URL_FILE=str(tmp_path / "no"))
    missing.start(wait_ready=False)
    assert missing.wait(30) == 2
    assert f"REDIS_URL_FILE: no such file: {tmp_path / 'no'}" in missing.logs()
