"""What a worker admits (``check_delivery``), URL redaction and the retry backoff."""

from __future__ import annotations

import json

import pytest
from taskiq.formatters.json_formatter import JSONFormatter

from app.broker import Backoff, RejectedDelivery, check_delivery, redact_url

ADD = "app.tasks.example:add"


def body(**fields: object) -> bytes:
    message: dict[str, object] = {
        "task_id": "0123abc",
        "task_name": ADD,
        "labels": {},
        "args": [1, 2],
        "kwargs": {},
    }
    message.update(fields)
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("data", "header", "reason", "detail"),
    [
        (b"not json", ADD, "unparseable", "not a taskiq message"),
        (b"[" * 50_000 + b"]" * 50_000, None, "unparseable", "not a taskiq message"),
        (body(args={"a": 1}), ADD, "unparseable", "args"),
        (body(task_name="app.tasks.example:noop"), ADD, "task-name-mismatch", "body names"),
        (body(task_id="a\nb"), None, "invalid-task-id", "'a\\nb'"),
        (body(task_id="a b"), None, "invalid-task-id", "task id"),
        (body(task_id="x" * 129), None, "invalid-task-id", "task id"),
        (body(task_id=""), None, "invalid-task-id", "task id"),
        (body(task_name="bad\nname"), None, "invalid-task-name", "task name"),
        (body(labels={"ack_type": "bogus"}), ADD, "invalid-label", "ack_type='bogus'"),
        (body(labels={"timeout": "soon"}), ADD, "invalid-label", "timeout='soon'"),
        (body(labels={"timeout": -1}), ADD, "invalid-label", "timeout='-1'"),
        (body(labels={"timeout": "nan"}), ADD, "invalid-label", "timeout='nan'"),
        (body(labels={"n": "x"}, labels_types={"n": 2}), ADD, "invalid-label", "labels"),
        (body(labels={"n": "1"}, labels_types={"n": 99}), ADD, "invalid-label", "labels"),
    ],
)
def test_rejected(data: bytes, header: str | None, reason: str, detail: str) -> None:
    with pytest.raises(RejectedDelivery) as info:
        check_delivery(JSONFormatter(), data, header)
    assert info.value.reason == reason
    assert detail in info.value.detail


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (body(), ADD),
        (body(), None),  # published without the header: the body names the task
        (body(task_id="order-17:retry.2_x"), ADD),
        (body(labels={"ack_type": "when_saved", "timeout": "2.5"}), ADD),
        (body(labels={"timeout": "30", "priority": "7"}, labels_types={"priority": 2}), ADD),
    ],
)
def test_admitted(data: bytes, header: str | None) -> None:
    assert check_delivery(JSONFormatter(), data, header).task_name == ADD


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://localhost:4222", "nats://localhost:4222"),
        ("nats://user:s3cret@nats:4222", "nats://user:***@nats:4222"),
        ("tls://t0ken@nats:4222", "tls://***@nats:4222"),
        ("nats://user:p@ss@nats:4222", "nats://user:***@nats:4222"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=5.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5
