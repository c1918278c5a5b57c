"""The benchmark client: one process that dispatches tasks and awaits their results.

``python -m bench.client CONFIG SCENARIO [options]`` prints one JSON object on stdout. It talks to
the servers named in the environment (``NATS_URL``, ``REDIS_URL``, ``BENCH_QUEUE_URL`` and the
per-configuration names the orchestrator sets) and always goes through the path a user calls, with
its defaults:

* taskiq (kiqstack, stock taskiq-nats, ListQueue): ``await task.kiq()``, then
  ``await handle.wait_result()`` (``check_interval`` 0.2 s; kiqstack's backend wakes it by push);
* Celery: ``noop.delay()``, then ``AsyncResult.get()``;
* Dramatiq: ``noop.send()``, then ``message.get_result(block=True)``;
* arq: ``await pool.enqueue_job("noop")``, then ``await job.result(poll_delay=...)``.

Celery's and Dramatiq's client APIs are blocking: each concurrent caller is a thread (a pool of
``--window`` threads, or one per in-flight task in the latency scenario), driven from the event
loop with ``run_in_executor``, as a threaded web server would call them.

With ``--handshake`` it prints ``ready`` after its warm-up and starts measuring when a line
arrives on stdin, so that the orchestrator samples the worker's CPU over the measurement only.

Scenarios:

* ``e2e``: ``--window`` callers, each dispatching a task and awaiting its result, then the next,
  until ``--n`` tasks are done (a service awaiting results for concurrent requests);
* ``bulk``: ``--n`` tasks dispatched one after the other, then every result awaited in order;
* ``enqueue``: ``--n`` tasks dispatched (``--window`` at once) and nothing awaited (drain preload);
* ``latency``: tasks started at ``--rate`` per second for ``--seconds`` (open loop), each result
  awaited; dispatch-to-result latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WAIT_TIMEOUT = 120.0
WARMUP_TASKS = 20
CONFIGS = (
    "kiqstack",
    "stock_nats",
    "redis_list",
    "celery",
    "dramatiq",
    "arq",
)


class Adapter:
    """One system's client: ``send`` dispatches a task, ``roundtrip`` dispatches and awaits."""

    async def open(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect."""

    async def send(self) -> Any:
        """Dispatch one no-op task; return its handle."""
        raise NotImplementedError

    async def roundtrip(self) -> None:
        """Dispatch one no-op task and wait for its stored result."""
        raise NotImplementedError


class TaskiqAdapter(Adapter):
    """taskiq: ``await task.kiq()`` and ``await handle.wait_result()``."""

    def __init__(self, config: str) -> None:
        """Import the configuration's broker (no I/O yet)."""
        if config == "kiqstack":
            from app.config import load_settings
            from app.tasks import example
            from app.tasks.broker import broker

            broker.configure(load_settings())
            self.broker: Any = broker
            self.task: Any = example.noop
        elif config == "stock_nats":
            from bench import stock_nats

            self.broker, self.task = stock_nats.broker, stock_nats.noop
        else:
            from bench import stock_redis

            self.broker, self.task = stock_redis.broker, stock_redis.noop

    async def open(self) -> None:
        """Start the broker as a client."""
        await self.broker.startup()

    async def close(self) -> None:
        """Stop the broker."""
        await self.broker.shutdown()

    async def send(self) -> Any:
        """``await task.kiq()``."""
        return await self.task.kiq()

    async def roundtrip(self) -> None:
        """``kiq()`` then ``wait_result()``."""
        handle = await self.task.kiq()
        result = await handle.wait_result(timeout=WAIT_TIMEOUT)
        if result.is_err:
            raise RuntimeError(f"task failed: {result.error}")


class ThreadedAdapter(Adapter):
    """A blocking client API, each caller a thread of a pool."""

    def __init__(self, threads: int) -> None:
        """Create the pool of caller threads."""
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="caller")

    def send_sync(self) -> Any:
        """Dispatch one task (blocking)."""
        raise NotImplementedError

    def roundtrip_sync(self) -> None:
        """Dispatch one task and wait for its result (blocking)."""
        raise NotImplementedError

    async def send(self) -> Any:
        """Dispatch in a caller thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.send_sync)

    async def roundtrip(self) -> None:
        """Dispatch and wait in a caller thread."""
        await asyncio.get_running_loop().run_in_executor(self.pool, self.roundtrip_sync)

    async def close(self) -> None:
        """Stop the caller threads."""
        self.pool.shutdown(wait=True)


class CeleryAdapter(ThreadedAdapter):
    """Celery: ``noop.delay()`` and ``AsyncResult.get()``."""

    def __init__(self, threads: int) -> None:
        """Import the Celery app."""
        super().__init__(threads)
        from bench.peers import celery_app

        self.app = celery_app.app
        self.task = celery_app.noop

    def send_sync(self) -> Any:
        """``noop.delay()``."""
        return self.task.delay()

    def roundtrip_sync(self) -> None:
        """``noop.delay().get()``."""
        self.task.delay().get(timeout=WAIT_TIMEOUT)

    async def close(self) -> None:
        """Stop the threads and close the app's connections."""
        await super().close()
        self.app.close()


class DramatiqAdapter(ThreadedAdapter):
    """Dramatiq: ``noop.send()`` and ``message.get_result(block=True)``."""

    def __init__(self, threads: int) -> None:
        """Import the Dramatiq broker and actor."""
        super().__init__(threads)
        from bench.peers import dramatiq_app

        self.broker = dramatiq_app.broker
        self.task = dramatiq_app.noop

    def send_sync(self) -> Any:
        """``noop.send()``."""
        return self.task.send()

    def roundtrip_sync(self) -> None:
        """``noop.send().get_result(block=True)``."""
        self.task.send().get_result(block=True, timeout=int(WAIT_TIMEOUT * 1000))

    async def close(self) -> None:
        """Stop the threads and close the broker."""
        await super().close()
        self.broker.close()


class ArqAdapter(Adapter):
    """arq: ``await pool.enqueue_job("noop")`` and ``await job.result(poll_delay=...)``."""

    def __init__(self) -> None:
        """Read the queue name and the poll delay."""
        from bench.peers import arq_app

        self.arq_app = arq_app
        self.queue = os.environ.get("BENCH_QUEUE", "arq:queue")
        self.poll = arq_app.poll_delay()
        self.pool: Any = None

    async def open(self) -> None:
        """``create_pool``."""
        from arq import create_pool

        self.pool = await create_pool(self.arq_app.redis_settings())

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.aclose()

    async def send(self) -> Any:
        """``enqueue_job``."""
        return await self.pool.enqueue_job("noop", _queue_name=self.queue)

    async def roundtrip(self) -> None:
        """``enqueue_job`` then ``Job.result``."""
        job = await self.pool.enqueue_job("noop", _queue_name=self.queue)
        await job.result(timeout=WAIT_TIMEOUT, poll_delay=self.poll)


def adapter(config: str, threads: int) -> Adapter:
    """The client of one configuration."""
    if config in ("kiqstack", "stock_nats", "redis_list"):
        return TaskiqAdapter(config)
    if config == "celery":
        return CeleryAdapter(threads)
    if config == "dramatiq":
        return DramatiqAdapter(threads)
    if config == "arq":
        return ArqAdapter()
    raise SystemExit(f"unknown configuration {config!r}")


async def _timed(call: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def _e2e(client: Adapter, n: int, window: int) -> dict[str, Any]:
    left = n

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.roundtrip()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(window, n))))
    elapsed = time.perf_counter() - started
    return {"n": n, "window": window, "seconds": elapsed, "tasks_per_s": n / elapsed}


async def _bulk(client: Adapter, n: int) -> dict[str, Any]:
    if not isinstance(client, TaskiqAdapter):
        raise SystemExit("the bulk scenario is for taskiq configurations")
    started = time.perf_counter()
    handles = [await client.send() for _ in range(n)]
    kicked = time.perf_counter()
    for handle in handles:
        result = await handle.wait_result(timeout=WAIT_TIMEOUT)
        if result.is_err:
            raise RuntimeError(f"task failed: {result.error}")
    elapsed = time.perf_counter() - started
    return {
        "n": n,
        "seconds": elapsed,
        "tasks_per_s": n / elapsed,
        "kiq_per_s": n / (kicked - started),
    }


async def _enqueue(client: Adapter, n: int, window: int) -> dict[str, Any]:
    left = n

    async def sender() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.send()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(min(window, n))))
    elapsed = time.perf_counter() - started
    return {"n": n, "seconds": elapsed, "kiq_per_s": n / elapsed}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _latency(client: Adapter, rate: float, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            latencies.append(await _timed(client.roundtrip))
        except Exception:
            errors += 1

    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = []
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one()))
    await asyncio.gather(*pending)
    achieved = total / (loop.time() - start)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "rate": rate,
        "seconds": seconds,
        "n": total,
        "errors": errors,
        "achieved_per_s": achieved,
        "p50": _percentile(ms, 50),
        "p95": _percentile(ms, 95),
        "p99": _percentile(ms, 99),
        "max": ms[-1] if ms else float("nan"),
        "mean": statistics.fmean(ms) if ms else float("nan"),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    # Threads for blocking clients: one per caller (e2e, enqueue), or enough for every task in
    # flight at the offered rate (latency: a second's worth, at least 64).
    threads = args.window if args.scenario != "latency" else max(64, int(args.rate))
    client = adapter(args.config, threads)
    await client.open()
    try:
        if args.scenario != "enqueue":
            await asyncio.gather(*(client.roundtrip() for _ in range(WARMUP_TASKS)))
        if args.handshake:
            # The orchestrator samples the worker's and servers' CPU between "ready" and "go".
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu0 = time.process_time()
        if args.scenario == "e2e":
            out = await _e2e(client, args.n, args.window)
        elif args.scenario == "bulk":
            out = await _bulk(client, args.n)
        elif args.scenario == "enqueue":
            out = await _enqueue(client, args.n, args.window)
        elif args.scenario == "latency":
            out = await _latency(client, args.rate, args.seconds)
        else:
            raise SystemExit(f"unknown scenario {args.scenario!r}")
        out["client_cpu_s"] = time.process_time() - cpu0
    finally:
        await client.close()
    out["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print its figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.client")
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("scenario", choices=["e2e", "bulk", "enqueue", "latency"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--handshake", action="store_true", help='print "ready" after the warm-up, wait for a line'
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    out = runner(_main(args))
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
