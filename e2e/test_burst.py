"""A burst of tasks: every one of them completes with the right result."""

from __future__ import annotations

import pytest

from e2e.support import ADD, Api

pytestmark = pytest.mark.e2e

BURST = 500


@pytest.mark.timeout(900)
def test_burst_of_500_tasks_all_complete(api: Api) -> None:
    task_ids = api.dispatch_many((ADD, (i, i)) for i in range(BURST))
    assert len(set(task_ids)) == BURST, "task ids must be unique"

    results = api.wait_all(task_ids, timeout=600)

    failed = {t: r for t, r in results.items() if r["status"] != "success"}
    assert not failed, f"{len(failed)} tasks failed, e.g. {list(failed.items())[:3]}"
    wrong = [
        (i, results[t]["result"]) for i, t in enumerate(task_ids) if results[t]["result"] != 2 * i
    ]
    assert not wrong, f"wrong results (index, result): {wrong[:10]}"
