"""Retries in memory: the policy, the definitions a failed run leaves, the final result."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from taskiq import TaskiqMessage

from app import metrics
from app.broker import KiqBroker
from app.lifecycle.definitions import RETRY, definition_subject
from app.lifecycle.retries import ATTEMPT_LABEL, RetryPolicy, attempt_of, retry_body
from app.wire import ATTEMPT_HEADER, MSG_ID_HEADER, SCHEDULE_TARGET_HEADER
from tests.support.memory import MemoryTransport
from tests.support.stack import metric_value
from tests.support.worker import InProcessWorker


def retries_counted(task_name: str) -> float:
    page = metrics.worker_exposition()[0].decode()
    try:
        return metric_value(page, "kiqstack_task_retries_total", task_name=task_name)
    except KeyError:
        return 0.0


def test_policy_from_labels() -> None:
    assert RetryPolicy.from_labels({}) is None
    assert RetryPolicy.from_labels({"retry_on_error": False}) is None
    policy = RetryPolicy.from_labels(
        {"retry_on_error": "true", "max_retries": "5", "retry_backoff": 2, "retry_jitter": False}
    )
    assert policy == RetryPolicy(max_retries=5, backoff=2.0, backoff_max=600.0, jitter=False)


def test_backoff_doubles_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff=1.0, backoff_max=5.0, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(backoff=4.0, backoff_max=100.0, jitter=True)
    rng = random.Random(7)  # noqa: S311
    delays = [jittered.delay(2, rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100  # really random


def test_retry_body_keeps_the_task_and_sets_the_attempt() -> None:
    original = TaskiqMessage(
        task_id="t1", task_name="x", labels={"a": 1}, labels_types={}, args=[1], kwargs={}
    )
    body = json.loads(retry_body(original.model_dump_json().encode(), "t1", 3))
    assert body["task_id"] == "t1"
    assert body["args"] == [1]
    assert body["labels"] == {"a": 1, ATTEMPT_LABEL: 3}
    assert attempt_of(TaskiqMessage.model_validate(body)) == 3


@pytest.fixture
def flaky(broker: KiqBroker) -> dict[str, int]:
    calls = {"n": 0}

    async def flaky(fail_times: int) -> str:
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise ConnectionError(f"failure {calls['n']}")
        return f"ok after {calls['n']}"

    async def picky() -> None:
        calls["n"] += 1
        raise KeyError("not retried")

    broker.register_task(
        flaky, task_name="t:flaky", retry_on_error=True, max_retries=3, retry_backoff=0.01
    )
    broker.register_task(
        picky,
        task_name="t:picky",
        retry_on_error=True,
        types_of_exceptions=(ConnectionError,),
    )
    return calls


async def settled(transport: MemoryTransport, worker: InProcessWorker) -> None:
    """Wait until every delivery was taken and has finished."""
    for _ in range(500):
        await asyncio.sleep(0.01)
        await worker.drain()
        if transport.queue.empty() and not len(transport.inflight):
            return
    raise AssertionError("deliveries not settled")


async def fire_retries(transport: MemoryTransport, worker: InProcessWorker, subject: str) -> int:
    """Fire the retry definition each time the worker leaves one; tell how often."""
    fired = 0
    while True:
        await settled(transport, worker)
        if subject not in transport.definitions:
            return fired
        transport.fire(subject)
        fired += 1


async def test_fails_twice_then_succeeds(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker, flaky: dict[str, int]
) -> None:
    await broker.startup()
    before = retries_counted("t:flaky")
    task = await broker.find_task("t:flaky").kicker().with_task_id("r-1").kiq(2)  # type: ignore[union-attr]
    subject = definition_subject(broker.settings, RETRY, "r-1")
    await settled(transport, worker)
    stored = transport.definitions[subject]
    assert stored.headers[ATTEMPT_HEADER] == "2"
    assert stored.headers[MSG_ID_HEADER] == "r-1:attempt:2"
    assert stored.headers[SCHEDULE_TARGET_HEADER] == broker.settings.nats_subject
    record = await broker.results.read_record("r-1")
    assert record.result is None
    assert record.state is not None
    assert record.state["status"] == "retrying"
    assert record.state["attempt"] == 2
    assert record.state["last_error"] == {"type": "ConnectionError", "message": "failure 1"}
    assert await fire_retries(transport, worker, subject) == 2
    result = await task.wait_result(timeout=5)
    assert result.return_value == "ok after 3"
    assert flaky["n"] == 3
    assert retries_counted("t:flaky") - before == 2
    assert transport.dead_letters == []
    await broker.shutdown()


async def test_retries_exhausted_store_the_last_error(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker, flaky: dict[str, int]
) -> None:
    await broker.startup()
    task = await broker.find_task("t:flaky").kicker().with_task_id("r-2").kiq(10)  # type: ignore[union-attr]
    fired = await fire_retries(transport, worker, definition_subject(broker.settings, RETRY, "r-2"))
    assert fired == 3
    result = await task.wait_result(timeout=5)
    assert result.is_err
    assert "failure 4" in str(result.error)
    assert flaky["n"] == 4
    assert transport.dead_letters == []
    await broker.shutdown()


async def test_only_the_listed_exceptions_retry(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker, flaky: dict[str, int]
) -> None:
    await broker.startup()
    task = await broker.find_task("t:picky").kicker().kiq()  # type: ignore[union-attr]
    result = await task.wait_result(timeout=5)
    assert result.is_err
    assert flaky["n"] == 1
    assert transport.definitions == {}
    await broker.shutdown()


async def test_a_redelivered_run_whose_retry_is_scheduled_is_not_run_again(
    broker: KiqBroker, transport: MemoryTransport, worker: InProcessWorker, flaky: dict[str, int]
) -> None:
    """A crash between the retry's publish and the ack: the redelivery is acked, not run."""
    await broker.startup()
    await broker.find_task("t:flaky").kicker().with_task_id("r-3").kiq(10)  # type: ignore[union-attr]
    await settled(transport, worker)
    assert flaky["n"] == 1
    first = transport.published[0]
    redelivered = transport.deliver(first.payload, first.headers, delivered=2)
    await settled(transport, worker)
    assert flaky["n"] == 1
    assert transport.client.answers(redelivered) == [b""]  # acked
    await broker.shutdown()
