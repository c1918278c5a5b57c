"""What a worker admits: ``check_delivery`` on what a message published by hand can hold."""

from __future__ import annotations

import json

import pytest
from taskiq.formatters.json_formatter import JSONFormatter

from app.admission import RejectedDelivery, check_delivery

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
