"""A user's own task package on the cluster: the release runs the image of examples/acme-tasks
(built FROM the kiqstack image, `make example-image`) with
``config.taskModules: app.tasks.example,acme_tasks.tasks`` (e2e/example-values.yaml), as a team
bringing its own tasks would; its tasks are dispatched through the API and run on the workers.
"""

from __future__ import annotations

import pytest

from e2e.support import ADD, Api

pytestmark = pytest.mark.e2e

SLUGIFY = "acme.slugify"
INVOICE_TOTAL = "acme.invoice_total"
WORD_COUNT = "acme.word_count"


def test_the_packages_tasks_are_served_next_to_the_examples(api: Api) -> None:
    response = api.get("/tasks")
    assert response.status_code == 200, response.text
    tasks = {task["name"]: task for task in response.json()}
    missing = {SLUGIFY, INVOICE_TOTAL, WORD_COUNT, ADD} - set(tasks)
    assert not missing, (
        f"not registered: {sorted(missing)}; the release must run the example image "
        "(make example-image) with e2e/example-values.yaml"
    )
    assert set(tasks[INVOICE_TOTAL]["parameters"]["properties"]) == {
        "quantities",
        "unit_prices",
        "tax_rate",
    }


def test_slugify_returns_the_slug(api: Api) -> None:
    response = api.dispatch_raw(SLUGIFY, "Ångström & Čapek: 3 Plays!", wait=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    assert body["result"] == "angstrom-capek-3-plays"

    short = api.wait_for(api.dispatch(SLUGIFY, "Kubernetes Worker Pools", max_length=10))
    assert short["status"] == "success", short
    assert short["result"] == "kubernetes"


def test_invoice_total_returns_net_tax_and_gross(api: Api) -> None:
    result = api.wait_for(api.dispatch(INVOICE_TOTAL, [3, 2], [1.25, 10.0], tax_rate=0.2))
    assert result["status"] == "success", result
    assert result["task_name"] == INVOICE_TOTAL
    assert result["result"] == {"net": 23.75, "tax": 4.75, "gross": 28.5}


def test_invoice_total_error_is_the_tasks_result(api: Api) -> None:
    result = api.wait_for(api.dispatch(INVOICE_TOTAL, [1, 2], [4.5]))
    assert result["status"] == "error", result
    assert result["result"] is None
    assert result["error"] == {
        "type": "ValueError",
        "message": "2 quantities but 1 unit prices: one of each per line",
    }


def test_word_count_sync_task_returns_the_top_words(api: Api) -> None:
    task_id = api.dispatch(WORD_COUNT, "To be, or not to be: that is the question", top=2)
    result = api.wait_for(task_id)
    assert result["status"] == "success", result
    assert result["result"] == [["to", 2], ["be", 2]]


def test_bad_arguments_are_refused_before_queueing(api: Api) -> None:
    response = api.dispatch_raw(INVOICE_TOTAL, ["three"], [1.0])
    assert response.status_code == 422, response.text
    assert "quantities" in response.text
