"""Prometheus metrics of the API and the worker (all prefixed ``kiqstack_``).

The series of a task carry its ``task_name`` and its ``queue`` (:mod:`app.queues`); the queue
depth is one series per queue a worker serves.

Metrics live in explicit registries. A worker container may run several worker processes
(``WORKER_PROCESSES`` > 1); then ``python -m app worker`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before the processes start, prometheus-client writes every process's values there,
and the metrics endpoint aggregates them (:func:`worker_exposition`). One process keeps them in
memory.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

API_REGISTRY = CollectorRegistry(auto_describe=True)
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
SCHEDULER_REGISTRY = CollectorRegistry(auto_describe=True)

# -- API ---------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "kiqstack_http_requests",
    "HTTP requests served by the API, by route template and status code.",
    ["method", "route", "status"],
    registry=API_REGISTRY,
)
HTTP_DURATION = Histogram(
    "kiqstack_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=_DURATION_BUCKETS,
    registry=API_REGISTRY,
)
TASKS_DISPATCHED = Counter(
    "kiqstack_tasks_dispatched",
    "Tasks queued by the API.",
    ["task_name", "queue"],
    registry=API_REGISTRY,
)
DISPATCH_ERRORS = Counter(
    "kiqstack_task_dispatch_errors",
    "Dispatches refused or failed, by reason.",
    ["task_name", "queue", "reason"],
    registry=API_REGISTRY,
)
IDEMPOTENT_REPLAYS = Counter(
    "kiqstack_idempotent_replays",
    "Dispatches answered with the task of an earlier request with the same Idempotency-Key.",
    ["task_name", "queue"],
    registry=API_REGISTRY,
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "kiqstack_http_connections_closed",
    "API connections closed by the server's limits (header_timeout, body_timeout, "
    "header_too_large, too_many_headers, max_connections).",
    ["reason"],
    registry=API_REGISTRY,
)

# -- worker ------------------------------------------------------------------------------------
TASKS_RECEIVED = Counter(
    "kiqstack_tasks_received",
    "Task messages a worker started to execute.",
    ["task_name", "queue"],
    registry=WORKER_REGISTRY,
)
TASKS_SUCCEEDED = Counter(
    "kiqstack_tasks_succeeded",
    "Tasks that returned a value.",
    ["task_name", "queue"],
    registry=WORKER_REGISTRY,
)
TASKS_FAILED = Counter(
    "kiqstack_tasks_failed",
    "Tasks that raised an exception (stored as an error result).",
    ["task_name", "queue"],
    registry=WORKER_REGISTRY,
)
TASK_DURATION = Histogram(
    "kiqstack_task_duration_seconds",
    "Wall time of task execution.",
    ["task_name", "queue"],
    buckets=_DURATION_BUCKETS,
    registry=WORKER_REGISTRY,
)
TASKS_IN_FLIGHT = Gauge(
    "kiqstack_tasks_in_flight",
    "Tasks executing right now.",
    registry=WORKER_REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "kiqstack_task_queue_wait_seconds",
    "Time from enqueue (JetStream timestamp) to the first start of a task.",
    ["task_name", "queue"],
    buckets=_DURATION_BUCKETS,
    registry=WORKER_REGISTRY,
)
QUEUE_PENDING = Gauge(
    "kiqstack_queue_pending",
    "Messages of a queue not yet delivered to any worker (its JetStream consumer's "
    "num_pending), as the workers serving the queue see it.",
    ["queue"],
    registry=WORKER_REGISTRY,
    multiprocess_mode="mostrecent",
)
QUEUE_ACK_PENDING = Gauge(
    "kiqstack_queue_ack_pending",
    "Messages of a queue delivered but not yet acknowledged (its consumer's num_ack_pending).",
    ["queue"],
    registry=WORKER_REGISTRY,
    multiprocess_mode="mostrecent",
)
REDELIVERIES = Counter(
    "kiqstack_task_redeliveries",
    "Deliveries of a message after its first (crash, timeout, or a worker gave it back).",
    ["task_name", "queue"],
    registry=WORKER_REGISTRY,
)
TASK_RETRIES = Counter(
    "kiqstack_task_retries",
    "Retries scheduled for tasks that failed with retries left (retry_on_error).",
    ["task_name"],
    registry=WORKER_REGISTRY,
)
TASKS_CANCELLED = Counter(
    "kiqstack_tasks_cancelled",
    "Queued tasks a worker dropped because they were cancelled before they started.",
    ["task_name"],
    registry=WORKER_REGISTRY,
)
GIVEN_BACK = Counter(
    "kiqstack_tasks_given_back",
    "Messages a worker returned for later redelivery, by reason.",
    ["reason"],
    registry=WORKER_REGISTRY,
)
DEAD_LETTERED = Counter(
    "kiqstack_tasks_dead_lettered",
    "Messages moved to the dead-letter stream, by reason.",
    ["reason"],
    registry=WORKER_REGISTRY,
)


def api_exposition() -> tuple[bytes, str]:
    """Render the API metrics in the Prometheus text format.

    :return: body and content type.
    """
    return generate_latest(API_REGISTRY), CONTENT_TYPE_LATEST


def worker_exposition() -> tuple[bytes, str]:
    """Render the worker metrics, aggregated over worker processes when there are several.

    :return: body and content type.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(WORKER_REGISTRY), CONTENT_TYPE_LATEST


# -- scheduler -----------------------------------------------------------------------------------
SCHEDULES = Gauge(
    "kiqstack_schedules",
    "Periodic schedules this scheduler declares.",
    registry=SCHEDULER_REGISTRY,
)
SCHEDULE_WRITES = Counter(
    "kiqstack_schedule_writes",
    "Schedule definitions written (created, updated) or deleted in NATS, by action.",
    ["action"],
    registry=SCHEDULER_REGISTRY,
)
SCHEDULER_ERRORS = Counter(
    "kiqstack_scheduler_errors",
    "Reconciliations of the schedules that failed.",
    registry=SCHEDULER_REGISTRY,
)


def scheduler_exposition() -> tuple[bytes, str]:
    """Render the scheduler metrics.

    :return: body and content type.
    """
    return generate_latest(SCHEDULER_REGISTRY), CONTENT_TYPE_LATEST
