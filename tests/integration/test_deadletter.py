"""``python -m app dlq list|replay`` against a real nats-server: every message on its own.

A dead-letter stream that was never used, a missing one, an unreachable NATS, and dead letters
that are not task messages at all (50,000 nested brackets, bytes, a JSON array): each gets a clear
answer, one line per message, and never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from app.config import Settings
from app.jetstream.topology import Topology
from app.wire import (
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SEQUENCE_HEADER,
    DEAD_LETTER_TIME_HEADER,
    TASK_NAME_HEADER,
)
from scripts.localinfra import Server, free_port, nats_server
from tests.support.stack import Stack, poll

pytestmark = [pytest.mark.integration, pytest.mark.process]

ADD = "app.tasks.example:add"
NESTED = b"[" * 50_000 + b"]" * 50_000


def dlq(env: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app dlq ...`` with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "app", "dlq", *args],
        env={**os.environ, **{key: str(value) for key, value in env.items()}},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def task_body(task_id: str, *args: Any) -> bytes:
    """A taskiq message, as the API publishes it."""
    message = {"task_id": task_id, "task_name": ADD, "labels": {}, "args": list(args), "kwargs": {}}
    return json.dumps(message).encode()


async def _nats(settings: Settings, *actions: Any) -> list[Any]:
    client = await nats.connect(settings.nats_url)
    js = client.jetstream()
    try:
        return [await action(js) for action in actions]
    finally:
        await client.close()


def create_streams(settings: Settings, *, tasks: bool = True) -> None:
    """Create the streams as a kiqstack process does at startup (nothing in them)."""
    topology = Topology(settings)
    actions = [lambda js: js.add_stream(topology.dead_letter_stream_config())]
    if tasks:
        actions.append(lambda js: js.add_stream(topology.task_stream_config()))
    asyncio.run(_nats(settings, *actions))


def dead_letter(settings: Settings, body: bytes, reason: str = "max-deliver") -> int:
    """Store a dead letter the way a worker does; return its sequence."""
    headers = {
        TASK_NAME_HEADER: ADD,
        DEAD_LETTER_REASON_HEADER: reason,
        DEAD_LETTER_DELIVERIES_HEADER: "6",
        DEAD_LETTER_SEQUENCE_HEADER: "17",
        DEAD_LETTER_TIME_HEADER: "1700000000.5",
    }
    subject = settings.nats_dead_letter_subject
    [ack] = asyncio.run(
        _nats(settings, lambda js: js.publish(subject, payload=body, headers=headers))
    )
    return int(ack.seq)


def stream_sequences(settings: Settings, stream: str) -> list[int]:
    """Sequences of the messages a stream holds."""

    async def read(js: Any) -> list[int]:
        info = await js.stream_info(stream)
        found = []
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            try:
                await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            found.append(seq)
        return found

    [found] = asyncio.run(_nats(settings, read))
    return found


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_a_never_used_stream_lists_nothing_and_replays_nothing(
    settings: Settings, env: dict[str, Any]
) -> None:
    create_streams(settings)
    listed = dlq(env, "list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "")
    replayed = dlq(env, "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == "replayed 0 message(s); refused 0, failed 0, not found 0\n"


def test_a_stream_emptied_by_a_replay_lists_nothing(
    settings: Settings, env: dict[str, Any]
) -> None:
    create_streams(settings)
    seq = dead_letter(settings, task_body("t-1", 1, 2))
    assert dlq(env, "replay", str(seq)).returncode == 0
    listed = dlq(env, "list")
    assert (listed.returncode, listed.stdout) == (0, ""), listed.stderr
    assert dlq(env, "replay", "--all").returncode == 0


@pytest.mark.parametrize("command", [["list"], ["replay", "--all"], ["replay", "1"]])
def test_a_missing_stream_is_one_clear_line(
    env: dict[str, Any], settings: Settings, command: list[str]
) -> None:
    result = dlq(env, *command)
    assert result.returncode == 1
    assert_no_traceback(result)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("kiqstack: dead-letter stream ")
    assert settings.nats_dead_letter_stream in line
    assert "NATS_DEAD_LETTER_STREAM" in line


@pytest.fixture
def stopped_nats(tmp_path: Path) -> Server:
    """A NATS URL where nothing listens any more."""
    (tmp_path / "nats").mkdir()
    server = nats_server(tmp_path / "nats").start()
    server.stop()
    return server


@pytest.mark.parametrize("command", [["list"], ["replay", "--all"]])
def test_unreachable_nats_is_one_clear_line(
    env: dict[str, Any], stopped_nats: Server, command: list[str]
) -> None:
    url = f"nats://user:secret@127.0.0.1:{stopped_nats.port}"
    result = dlq({**env, "NATS_URL": url}, *command)
    assert result.returncode == 1
    assert_no_traceback(result)
    [line] = result.stderr.splitlines()
    assert line.startswith("kiqstack: cannot connect to NATS at nats://***@127.0.0.1:")
    assert "(NATS_URL)" in line
    assert "secret" not in line


def test_pathological_dead_letters_are_listed_one_by_one(
    settings: Settings, env: dict[str, Any]
) -> None:
    create_streams(settings)
    deep_args = json.loads(b"[" * 900 + b"]" * 900)  # parses, but deeper than asdict() could copy
    bodies = [
        task_body("good-1", 1, 2),
        NESTED,
        b"\xff\xfe not json",
        b"[1, 2, 3]",
        json.dumps({"task_id": "deep", "task_name": ADD, "args": [deep_args]}).encode(),
        task_body("good-2", 3, 4),
    ]
    sequences = [dead_letter(settings, body) for body in bodies]
    result = dlq(env, "list")
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    letters = lines(result.stdout)
    assert [x["sequence"] for x in letters] == sequences
    assert [x["task_id"] for x in letters] == ["good-1", None, None, None, "deep", "good-2"]
    assert all(x["task_name"] == ADD and x["reason"] == "max-deliver" for x in letters)
    assert (letters[0]["args"], letters[0]["deliveries"], letters[0]["original_sequence"]) == (
        [1, 2],
        6,
        17,
    )
    assert letters[0]["dead_lettered_at"] == 1700000000.5
    assert letters[0]["body_error"] is None
    assert "nested too deeply" in letters[1]["body_error"]
    assert "not JSON" in letters[2]["body_error"]
    assert "JSON array, not a task message" in letters[3]["body_error"]
    assert letters[4]["body_error"] is None
    assert letters[5]["args"] == [3, 4]


def test_limit_says_how_many_were_left_out(settings: Settings, env: dict[str, Any]) -> None:
    create_streams(settings)
    for n in range(3):
        dead_letter(settings, task_body(f"t-{n}", n, n))
    result = dlq(env, "list", "--limit", "2")
    assert result.returncode == 0
    assert [x["task_id"] for x in lines(result.stdout)] == ["t-0", "t-1"]
    assert result.stderr == "kiqstack: showed 2 of 3 dead letters (--limit 2)\n"


def test_list_into_a_pipe_that_closes_early(settings: Settings, env: dict[str, Any]) -> None:
    create_streams(settings)
    for n in range(30):
        dead_letter(settings, task_body(f"t-{n}", "x" * 4000))
    script = f"{sys.executable} -m app dlq list | head -c 10 >/dev/null"
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **{key: str(value) for key, value in env.items()}},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_no_traceback(result)


def test_replay_all_goes_on_past_bad_messages_and_says_what_it_did(
    stack: Stack, settings: Settings, env: dict[str, Any]
) -> None:
    server = stack.role("server")  # creates the streams
    stack.role("worker")
    good = [str(uuid.uuid4()), str(uuid.uuid4())]
    seqs = [
        dead_letter(settings, task_body(good[0], 2, 3)),
        dead_letter(settings, NESTED),
        dead_letter(settings, b'{"no": "task"}'),
        dead_letter(settings, task_body(good[1], 4, 5)),
    ]
    result = dlq(env, "replay", "--all")
    assert result.returncode == 1
    assert_no_traceback(result)
    out = result.stdout.splitlines()
    assert out[0].startswith(
        f"replayed {seqs[0]}: task {good[0]} ({ADD}) -> queue default, stream "
    )
    assert out[1].startswith(f"refused {seqs[1]}: body of 100000 bytes is not a task message")
    assert out[1].endswith("left in the dead-letter stream")
    assert out[2].startswith(f"refused {seqs[2]}: body has no task_id or task_name")
    assert out[3].startswith(f"replayed {seqs[3]}: task {good[1]} ")
    assert out[4] == "replayed 2 message(s); refused 2, failed 0, not found 0"
    assert result.stderr == "kiqstack: 2 dead letter(s) not replayed (see the lines above)\n"
    # The replayed ones ran; the refused ones are still dead letters, and only they.
    for task_id, expected in zip(good, (5, 9), strict=True):
        assert _result(server.probe_url, task_id)["result"] == expected
    assert stream_sequences(settings, settings.nats_dead_letter_stream) == seqs[1:3]


def _result(base: str, task_id: str) -> dict[str, Any]:
    """The finished task (404 until the replayed task stored its result: never dispatched)."""

    def finished() -> dict[str, Any] | None:
        response = httpx.get(f"{base}/tasks/{task_id}", timeout=5)
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if body["status"] != "queued" else None

    return poll(finished, 60, lambda: f"task {task_id} did not run")


def test_replay_of_chosen_sequences_reports_each(settings: Settings, env: dict[str, Any]) -> None:
    create_streams(settings)
    first = dead_letter(settings, task_body("a", 1, 1))
    second = dead_letter(settings, task_body("b", 2, 2))
    result = dlq(env, "replay", str(second), "999", str(second))
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert out[0].startswith(f"replayed {second}: task b ")
    assert (
        out[1] == f"not found 999: no such message in stream '{settings.nats_dead_letter_stream}'"
    )
    assert out[2] == "replayed 1 message(s); refused 0, failed 0, not found 1"
    assert stream_sequences(settings, settings.nats_dead_letter_stream) == [first]
    assert len(stream_sequences(settings, settings.nats_stream)) == 1


def test_replay_without_a_task_stream_stops_with_one_line(
    settings: Settings, env: dict[str, Any]
) -> None:
    create_streams(settings, tasks=False)
    seq = dead_letter(settings, task_body("a", 1, 1))
    result = dlq(env, "replay", "--all")
    assert result.returncode == 1
    assert_no_traceback(result)
    [line] = result.stderr.splitlines()
    assert f"no JetStream stream takes subject '{settings.nats_subject}' (NATS_SUBJECT)" in line
    assert stream_sequences(settings, settings.nats_dead_letter_stream) == [seq]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["list", "--limit", "0"], "must be 1 or more"),
        (["replay", "x"], "is not a whole number"),
        (["replay"], "one of the arguments SEQUENCE --all is required"),
        (["replay", "3", "--all"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], fragment: str) -> None:
    result = dlq({"NATS_URL": f"nats://127.0.0.1:{free_port()}"}, *args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert result.stderr.startswith("usage: python -m app dlq")
