"""Tasks dispatched over the HTTP API run on the workers and their results come back."""

from __future__ import annotations

import pytest

from e2e.support import ADD, RISKY, SLEEP, Api

pytestmark = pytest.mark.e2e


def test_probes_answer(api: Api) -> None:
    assert api.get("/livez").status_code == 200
    assert api.get("/readyz").status_code == 200


def test_example_tasks_are_registered(api: Api) -> None:
    response = api.get("/tasks")
    assert response.status_code == 200, response.text
    names = {task["name"] for task in response.json()}
    assert {ADD, RISKY, SLEEP} <= names


def test_add_round_trip(api: Api) -> None:
    task_id = api.dispatch(ADD, 2, 3)
    result = api.wait_for(task_id)
    assert result["status"] == "success", result
    assert result["result"] == 5
    assert result["task_id"] == task_id
    assert result["task_name"] == ADD
    assert result["error"] is None


def test_kwargs_round_trip(api: Api) -> None:
    response = api.dispatch_raw(ADD, a=40, b=2)
    assert response.status_code == 202, response.text
    assert api.wait_for(response.json()["task_id"])["result"] == 42


def test_wait_returns_the_result_inline(api: Api) -> None:
    response = api.dispatch_raw(ADD, 20, 22, wait=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    assert body["result"] == 42


def test_failing_task_reports_its_error(api: Api) -> None:
    task_id = api.dispatch(RISKY)
    result = api.wait_for(task_id)
    assert result["status"] == "error", result
    assert result["result"] is None
    assert result["error"]["type"] == "ValueError", result
    assert "Something went wrong" in result["error"]["message"], result


def test_unknown_task_is_rejected(api: Api) -> None:
    response = api.dispatch_raw("app.tasks.example:does_not_exist")
    assert response.status_code == 404, response.text


def test_bad_arguments_are_rejected_before_dispatch(api: Api) -> None:
    response = api.dispatch_raw(ADD, 1)  # b is missing
    assert response.status_code == 422, response.text
