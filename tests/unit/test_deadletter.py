"""Dead-letter decoding: any body, however malformed, becomes one listable line."""

from __future__ import annotations

import json

import pytest

from app.deadletter import (
    DeadLetter,
    Outcome,
    ReplayResult,
    ReplaySummary,
    decode,
    parse_body,
    replay_problem,
)
from app.wire import (
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_REASON_HEADER,
    QUEUE_HEADER,
    TASK_NAME_HEADER,
)

TASK = {"task_id": "t1", "task_name": "app.tasks.example:add", "args": [1, 2], "kwargs": {}}


def test_a_task_message_decodes() -> None:
    headers = {
        TASK_NAME_HEADER: "app.tasks.example:add",
        DEAD_LETTER_REASON_HEADER: "unknown-task",
        DEAD_LETTER_DELIVERIES_HEADER: "5",
    }
    letter = decode(7, headers, json.dumps(TASK).encode())
    assert letter == DeadLetter(
        sequence=7,
        task_id="t1",
        task_name="app.tasks.example:add",
        queue="default",
        reason="unknown-task",
        deliveries=5,
        dead_lettered_at=None,
        original_sequence=None,
        args=[1, 2],
        kwargs={},
    )
    assert replay_problem(letter) is None
    assert json.loads(letter.as_json())["body_error"] is None
    assert json.loads(letter.as_json())["detail"] is None


def test_decode_finds_the_queue_in_the_header_or_the_labels() -> None:
    body = json.dumps({**TASK, "labels": {"queue": "cpu"}}).encode()
    assert decode(1, {}, body).queue == "cpu"
    assert decode(1, {QUEUE_HEADER: "gpu"}, body).queue == "gpu"
    assert decode(1, {}, json.dumps(TASK).encode()).queue == "default"
    bad = decode(1, {QUEUE_HEADER: "No Such"}, body)
    assert replay_problem(bad) == "queue 'No Such' is not a valid queue name"
    assert json.loads(decode(1, {QUEUE_HEADER: "cpu"}, body).as_json())["queue"] == "cpu"


def test_decode_shows_what_a_delivery_check_found() -> None:
    headers = {
        TASK_NAME_HEADER: "app.tasks.example:add",
        DEAD_LETTER_REASON_HEADER: "invalid-label",
        DEAD_LETTER_DETAIL_HEADER: "ack_type: 'bogus' is not an acknowledgement type",
    }
    letter = decode(3, headers, json.dumps(TASK).encode())
    assert letter.reason == "invalid-label"
    assert json.loads(letter.as_json())["detail"] == headers[DEAD_LETTER_DETAIL_HEADER]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "JSON nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b"\xff\xfe\x00", "is not JSON"),
        (b"", "is not JSON"),
        (b"not json", "is not JSON"),
        (b"[1, 2]", "is a JSON array, not a task message object"),
        (b'"text"', "is a JSON string, not"),
        (b"null", "is a JSON null, not"),
        (b"3.5", "is a JSON number, not"),
    ],
)
def test_a_body_that_is_no_task_message_is_described(body: bytes, fragment: str) -> None:
    parsed, problem = parse_body(body)
    assert parsed is None
    assert problem is not None
    assert fragment in problem
    letter = decode(1, {TASK_NAME_HEADER: "x"}, body)
    assert letter.body_error == problem
    assert (letter.task_id, letter.task_name, letter.args) == (None, "x", None)
    assert replay_problem(letter) == problem
    assert json.loads(letter.as_json())["sequence"] == 1


def test_fields_of_the_wrong_type_are_left_out() -> None:
    body = json.dumps({"task_id": {"a": 1}, "task_name": 3, "args": [1]}).encode()
    letter = decode(2, {DEAD_LETTER_DELIVERIES_HEADER: "many"}, body)
    assert (letter.task_id, letter.task_name, letter.deliveries) == (None, None, None)
    assert replay_problem(letter) == "body has no task_id or task_name: not a task message"


def test_arguments_too_deep_to_encode_are_left_out_of_the_line() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    letter = DeadLetter(1, "t", "n", "default", None, None, None, None, args=deep)
    shown = json.loads(letter.as_json())
    assert shown["args"] is None
    assert shown["body_error"].startswith("arguments not shown")
    assert shown["task_id"] == "t"


def test_replay_lines() -> None:
    summary = ReplaySummary()
    results = [
        ReplayResult(1, Outcome.REPLAYED, "task a"),
        ReplayResult(2, Outcome.REFUSED, "not JSON"),
        ReplayResult(3, Outcome.NOT_FOUND, "gone"),
    ]
    for result in results:
        summary.add(result)
    assert [r.line() for r in results] == [
        "replayed 1: task a",
        "refused 2: not JSON",
        "not found 3: gone",
    ]
    assert summary.line() == "replayed 1 message(s); refused 1, failed 0, not found 1"
    assert summary.problems == 2
