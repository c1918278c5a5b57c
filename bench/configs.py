"""The configurations ``python -m bench`` measures: how each worker starts, and what is tuned.

A configuration is one system (its client in :mod:`bench.client`) with one worker process and
one set of knobs. Rows marked ``tuned`` change a default; the same system's defaults have a row
of their own, so the table shows both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs

ARQ_VENV = procs.ROOT / ".venv" / "peers" / "arq"
ARQ_REQUIREMENTS = procs.ROOT / "bench" / "requirements-arq.txt"


@dataclass(frozen=True)
class Config:
    """One measured configuration."""

    name: str
    label: str
    client: str  # the client family in bench.client
    worker: Callable[[], list[str]]
    setup: str  # what is set, for the docs and the JSON
    env: dict[str, str] = field(default_factory=dict)
    python: Callable[[], str] = procs.python
    scenarios: tuple[str, ...] = ("e2e", "latency", "drain")
    tuned: bool = False

    def names(self) -> dict[str, str]:
        """Fresh stream, subject, consumer and queue names, so that runs share no state."""
        tag = uuid.uuid4().hex[:10]
        if self.client == "kiqstack":
            return {
                "NATS_STREAM": f"kqb_{tag}",
                "NATS_SUBJECT": f"kqb.{tag}.tasks",
                "NATS_CONSUMER": f"kqbw_{tag}",
                "NATS_DEAD_LETTER_STREAM": f"kqbdl_{tag}",
                "NATS_DEAD_LETTER_SUBJECT": f"kqb.{tag}.dead",
            }
        if self.client == "stock_nats":
            return {
                "BENCH_STREAM": f"stk_{tag}",
                "BENCH_SUBJECT": f"stk.{tag}",
                "BENCH_DURABLE": f"stkd_{tag}",
            }
        return {"BENCH_QUEUE": f"bench_{tag}"}


def arq_python() -> str:
    """The interpreter of arq's own virtualenv (``make bench`` creates it)."""
    python = ARQ_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(
            f"arq's virtualenv is missing: run `make bench-peers` (or create {_rel(ARQ_VENV)} "
            f"and pip install -r {_rel(ARQ_REQUIREMENTS)})"
        )
    return str(python)


def _rel(path: Path) -> str:
    return str(path.relative_to(procs.ROOT))


def _py(*args: str) -> Callable[[], list[str]]:
    return lambda: [procs.python(), *args]


def _taskiq(module: str) -> Callable[[], list[str]]:
    return _py("-m", "taskiq", "worker", f"{module}:broker", "-w", "1")


def _celery(pool: str, *extra: str) -> Callable[[], list[str]]:
    return _py("-m", "celery", "-A", "bench.peers.celery_app", "worker", "-P", pool, *extra)


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config(
            "kiqstack",
            "kiqstack",
            "kiqstack",
            _py("-m", "app", "worker"),
            "`python -m app worker`, its defaults: 1 process, WORKER_CONCURRENCY 16, "
            "WORKER_FETCH_BATCH 16, ack after the result is saved",
            scenarios=("e2e", "latency", "drain", "scale", "http", "bulk"),
        ),
        Config(
            "kiqstack_2p",
            "kiqstack, 2 processes",
            "kiqstack",
            _py("-m", "app", "worker"),
            "as kiqstack with WORKER_PROCESSES=2 (scale scenario: 1 → 2 worker processes)",
            env={"WORKER_PROCESSES": "2"},
            scenarios=("e2e", "drain"),
        ),
        Config(
            "stock_nats",
            "taskiq-nats stock",
            "stock_nats",
            _taskiq("bench.stock_nats"),
            "taskiq-nats PullBasedJetStreamBroker + taskiq-redis RedisAsyncResultBackend, "
            "defaults (`wait_result` polls every 0.2 s)",
            scenarios=("e2e", "latency", "drain", "bulk"),
        ),
        Config(
            "redis_list",
            "taskiq-redis ListQueue",
            "redis_list",
            _taskiq("bench.stock_redis"),
            "taskiq-redis ListQueueBroker (at-most-once) + RedisAsyncResultBackend, defaults",
            scenarios=("e2e", "latency", "drain", "bulk"),
        ),
        Config(
            "celery_prefork",
            "Celery prefork",
            "celery",
            _celery("prefork"),
            "Celery, Redis broker and backend, task_acks_late; prefork pool with its defaults: "
            "concurrency = CPU count (2 child processes here), worker_prefetch_multiplier 4",
        ),
        Config(
            "celery_threads",
            "Celery threads",
            "celery",
            _celery("threads"),
            "as Celery prefork, threads pool with its defaults: concurrency = CPU count "
            "(2 threads here), worker_prefetch_multiplier 4",
        ),
        Config(
            "celery_threads_c16",
            "Celery threads -c 16",
            "celery",
            _celery("threads", "-c", "16"),
            "tuned: threads pool with 16 threads (kiqstack's WORKER_CONCURRENCY), "
            "worker_prefetch_multiplier 4",
            tuned=True,
        ),
        Config(
            "dramatiq",
            "Dramatiq",
            "dramatiq",
            _py("-m", "dramatiq", "bench.peers.dramatiq_app", "--processes", "1"),
            "Dramatiq, Redis broker, Results middleware with the Redis backend; "
            "--processes 1 (the default is one per CPU), 8 threads (default), prefetch 16 "
            "(2 x threads, default)",
        ),
        Config(
            "arq",
            "arq",
            "arq",
            lambda: [arq_python(), "-m", "arq", "bench.peers.arq_app.WorkerSettings"],
            "arq, defaults: worker poll_delay 0.5 s, max_jobs 10, queue_read_limit 100; "
            "client Job.result(poll_delay=0.5)",
            python=arq_python,
        ),
        Config(
            "arq_poll50ms",
            "arq, 0.05 s poll",
            "arq",
            lambda: [arq_python(), "-m", "arq", "bench.peers.arq_app.WorkerSettings"],
            "tuned: arq with poll_delay 0.05 s in the worker and in Job.result; "
            "max_jobs 10 (default)",
            env={"BENCH_ARQ_POLL": "0.05"},
            python=arq_python,
            tuned=True,
        ),
    )
}
