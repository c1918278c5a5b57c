"""The worker as real processes when things go wrong: no double runs, NATS down or emptied,
messages nobody should have published, clean stops."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import time

import httpx
import nats
import pytest
import redis

from scripts.localinfra import Server, free_port
from tests.support.logcheck import assert_clean_log, started_ids
from tests.support.stack import Stack, dispatch, metric_value, poll, result_of, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.process]


def test_no_task_runs_twice_at_the_same_time(stack: Stack) -> None:
    """Issue 9: 2 workers, tasks as long as ACK_WAIT, bursts larger than the workers' slots.

    A pull request could outlive nats-py's fetch() that made it (its end raced the client's own
    timeout); what the server then sent waited in the client's buffer, unseen and not kept alive,
    while its worker was busy, until its ack wait ran out: then another worker ran it too. Each
    round lets the workers idle first (their pull requests expire empty), then sends a burst.
    """
    stack.base_env.update({"ACK_WAIT_SECONDS": "3", "WORKER_CONCURRENCY": "2"})
    server = stack.role("server")
    workers = [stack.role("worker"), stack.role("worker")]
    task_ids: list[str] = []
    for _ in range(3):
        time.sleep(2.5)  # idle: a few empty pulls
        burst = [
            dispatch(server.probe_url, "app.tasks.example:sleep_task", 3).json()["task_id"]
            for _ in range(6)  # 1.5 times the 4 slots
        ]
        for task_id in burst:
            assert result_of(server.probe_url, task_id, timeout=90)["status"] == "success"
        task_ids += burst
    starts = [task for worker in workers for task in started_ids(worker.logs())]
    assert sorted(starts) == sorted(task_ids), "a task ran more than once"
    for worker in workers:
        with pytest.raises(KeyError):  # nothing was ever delivered twice
            metric_value(worker.metrics(), "kiqstack_task_redeliveries_total")


def _probe(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_worker_without_nats_waits_quietly_and_stops_on_sigterm(stack: Stack) -> None:
    port = free_port()
    stack.base_env["NATS_URL"] = f"nats://kiq:s3cret@127.0.0.1:{port}"
    worker = stack.role("worker", start=False, WORKER_SHUTDOWN_TIMEOUT="10")
    worker.start(wait_ready=False)
    base = f"http://127.0.0.1:{worker.metrics_port}"
    poll(lambda: True if _probe(f"{base}/livez") == 200 else None, 30, worker.logs)
    assert _probe(f"{base}/readyz") == 503  # alive, not ready: it waits for NATS
    poll(
        lambda: True if worker.logs().count("cannot reach NATS") >= 4 else None,
        60,
        worker.logs,
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(25) == 0  # WORKER_SHUTDOWN_TIMEOUT + a margin: a deadline, not a speed
    logs = worker.logs()
    assert_clean_log(logs)
    assert "s3cret" not in logs
    assert f"nats://***@127.0.0.1:{port}" in logs
    waits = [float(w) for w in re.findall(r"next attempt in ([0-9.]+)s", logs)]
    assert waits == sorted(waits)  # backing off, not hammering
    assert max(waits) <= 5.0


def test_server_without_nats_stops_on_sigterm_before_its_connect_bound(stack: Stack) -> None:
    """The API waits for NATS up to NATS_CONNECT_TIMEOUT_SECONDS; a SIGTERM meanwhile stops it.

    Before, uvicorn sat in its startup until the bound ran out (30 s by default) whatever the
    signals said, then printed a traceback.
    """
    stack.base_env["NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    server = stack.role("server", start=False, NATS_CONNECT_TIMEOUT_SECONDS="300")
    server.start(wait_ready=False)
    poll(
        lambda: True if server.logs().count("cannot reach NATS") >= 2 else None,
        60,
        server.logs,
    )
    server.signal(signal.SIGTERM)
    assert server.wait(60) == 0  # far below the 300 s bound: the signal ended the wait
    logs = server.logs()
    assert_clean_log(logs)
    assert "stopped by a signal before the API was ready" in logs


def _restart_empty(server: Server) -> None:
    """Stop NATS, throw its JetStream store away (a lost volume), start it again."""
    server.stop()
    store = server.workdir / "jetstream"
    shutil.rmtree(store)
    store.mkdir()
    server.start()


def test_nats_restarted_without_its_data(stack: Stack, own_nats: Server) -> None:
    """Issue 9: streams and consumer are recreated; /readyz reports the outage meanwhile."""
    server = stack.role("server")
    worker = stack.role("worker")
    assert dispatch(server.probe_url, "app.tasks.example:add", 1, 1, wait=30).json()["result"] == 2
    own_nats.stop()
    for role in (server, worker):
        url = f"{role.probe_url}/readyz"
        poll(lambda u=url: True if _probe(u) == 503 else None, 30, role.logs)
    _restart_empty(own_nats)

    def succeeded() -> dict | None:
        response = dispatch(server.probe_url, "app.tasks.example:add", 2, 3, wait=10)
        return response.json() if response.status_code == 200 else None

    assert poll(succeeded, 60, worker.logs)["result"] == 5
    for role in (server, worker):
        role.wait_ready(30)
    for _ in range(3):  # and it stays that way
        assert (
            dispatch(server.probe_url, "app.tasks.example:add", 3, 4, wait=30).json()["result"] == 7
        )
    assert "was missing (NATS restarted without its data?)" in server.logs() + worker.logs()
    for role in (server, worker):
        assert_clean_log(role.logs())


async def _publish_raw(nats_url: str, subject: str, cases: list[tuple[dict, bytes]]) -> None:
    conn = await nats.connect(nats_url)
    try:
        js = conn.jetstream()
        for headers, body in cases:
            await js.publish(subject, body, headers=headers or None)
    finally:
        await conn.close()


async def _dead_letters(nats_url: str, stream: str, want: int) -> list[tuple[str, str, str]]:
    conn = await nats.connect(nats_url)
    try:
        js = conn.jetstream()
        found = []
        for seq in range(1, want + 1):
            msg = await js.get_msg(stream, seq)
            headers = msg.headers or {}
            found.append(
                (
                    headers.get("Kiq-Dead-Letter-Reason", ""),
                    headers.get("Kiq-Dead-Letter-Detail", ""),
                    (msg.data or b"").decode(errors="replace"),
                )
            )
        return found
    finally:
        await conn.close()


def _body(task_id: str, task_name: str = "app.tasks.example:add", **extra: object) -> bytes:
    message = {"task_id": task_id, "task_name": task_name, "labels": {}, "args": [2, 2]}
    message["kwargs"] = {}
    message.update(extra)
    return json.dumps(message).encode()


def test_messages_published_by_hand_are_validated(stack: Stack, env: dict[str, str]) -> None:
    """Issue 10: what taskiq would drop, choke on, or pass on unchecked is dead-lettered."""
    add = {"Kiq-Task-Name": "app.tasks.example:add"}
    cases = [
        (add, b"this is not JSON"),
        (add, _body("mismatch", task_name="app.tasks.example:noop")),
        (add, _body("bogus-ack", labels={"ack_type": "bogus"})),
        (add, _body("evil\nid")),
        (add, _body("bad-timeout", labels={"timeout": "soon"})),
        (add, _body("bad-type", labels={"x": "1"}, labels_types={"x": 99})),
        ({}, _body("fine-without-header")),
    ]
    server = stack.role("server")
    worker = stack.role("worker")
    asyncio.run(_publish_raw(env["NATS_URL"], env["NATS_SUBJECT"], cases))
    body = result_of(server.probe_url, "fine-without-header", redis_restarts=True)
    assert body["result"] == 4
    letters = asyncio.run(_dead_letters(env["NATS_URL"], env["NATS_DEAD_LETTER_STREAM"], 6))
    assert [reason for reason, _, _ in letters] == [
        "unparseable",
        "task-name-mismatch",
        "invalid-label",
        "invalid-task-id",
        "invalid-label",
        "invalid-label",
    ]
    assert "ack_type='bogus'" in letters[2][1]
    assert letters[0][2] == "this is not JSON"  # kept as published, for replay after a fix
    page = worker.metrics()
    assert metric_value(page, "kiqstack_tasks_in_flight") == 0
    assert metric_value(page, "kiqstack_tasks_dead_lettered_total", reason="invalid-label") == 3
    consumer = asyncio.run(_consumer_info(env))
    assert consumer.num_ack_pending == 0  # nothing left hanging
    logs = worker.logs()
    assert_clean_log(logs)
    assert not any(line.startswith("id") for line in logs.splitlines())  # no split lines
    keys = redis.Redis.from_url(env["REDIS_URL"]).keys(f"{env['RESULT_KEY_PREFIX']}:*")
    assert all(b"\n" not in key for key in keys)


async def _consumer_info(env: dict[str, str]):
    conn = await nats.connect(env["NATS_URL"])
    try:
        return await conn.jetstream().consumer_info(env["NATS_STREAM"], env["NATS_CONSUMER"])
    finally:
        await conn.close()


def test_stop_after_nats_went_away_prints_no_traceback(stack: Stack, own_nats: Server) -> None:
    """Ctrl-C on ``make run`` stops NATS and the app together: the app must still stop cleanly."""
    server = stack.role("server")
    worker = stack.role("worker")
    both = stack.role("both")
    own_nats.stop()
    wait_for_log(worker, "cannot reach NATS")
    for role in (server, worker, both):
        role.signal(signal.SIGTERM)
    for role in (server, worker, both):
        assert role.wait(40) == 0
        assert_clean_log(role.logs())


def test_clean_stop_prints_no_traceback(stack: Stack) -> None:
    both = stack.role("both")
    worker = stack.role("worker")
    assert dispatch(both.probe_url, "app.tasks.example:noop", wait=30).status_code == 200
    for role in (both, worker):
        role.signal(signal.SIGINT)
    for role in (both, worker):
        assert role.wait(40) == 0
        assert_clean_log(role.logs())


def test_short_tasks_keep_their_execution_time(stack: Stack) -> None:
    server = stack.role("server")
    stack.role("worker")
    body = dispatch(server.probe_url, "app.tasks.example:add", 1, 2, wait=30).json()
    assert body["result"] == 3
    assert body["execution_time"] > 0  # taskiq's own value is rounded to 0.0
