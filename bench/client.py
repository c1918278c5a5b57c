"""The benchmark client: one process that dispatches tasks and awaits their results.

``python -m bench.client CONFIG SCENARIO [options]`` prints one JSON object on stdout. It talks to
the servers named in the environment (``NATS_URL``, ``REDIS_URL`` and the per-configuration names
the orchestrator sets) and always goes through the path a user calls: ``await task.kiq()`` and
``await handle.wait_result()`` with their defaults (``check_interval`` 0.2 s).

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
import resource
import statistics
import sys
import time
from typing import Any

WAIT_TIMEOUT = 120.0
WARMUP_TASKS = 20


async def _open(config: str) -> tuple[Any, Any]:
    """Start the configuration's broker as a client; return (broker, noop task)."""
    if config == "kiqstack":
        from app.config import load_settings
        from app.tasks import example
        from app.tasks.broker import broker

        broker.configure(load_settings())
        await broker.startup()
        return broker, example.noop
    if config == "stock_nats":
        from bench import stock_nats

        await stock_nats.broker.startup()
        return stock_nats.broker, stock_nats.noop
    if config == "redis_list":
        from bench import stock_redis

        await stock_redis.broker.startup()
        return stock_redis.broker, stock_redis.noop
    raise SystemExit(f"unknown configuration {config!r}")


async def _roundtrip(task: Any) -> float:
    started = time.perf_counter()
    handle = await task.kiq()
    result = await handle.wait_result(timeout=WAIT_TIMEOUT)
    if result.is_err:
        raise RuntimeError(f"task failed: {result.error}")
    return time.perf_counter() - started


async def _e2e(task: Any, n: int, window: int) -> dict[str, Any]:
    left = n

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _roundtrip(task)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(window, n))))
    elapsed = time.perf_counter() - started
    return {"n": n, "window": window, "seconds": elapsed, "tasks_per_s": n / elapsed}


async def _bulk(task: Any, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    handles = [await task.kiq() for _ in range(n)]
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


async def _enqueue(task: Any, n: int, window: int) -> dict[str, Any]:
    left = n

    async def sender() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await task.kiq()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(min(window, n))))
    elapsed = time.perf_counter() - started
    return {"n": n, "seconds": elapsed, "kiq_per_s": n / elapsed}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _latency(task: Any, rate: float, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            latencies.append(await _roundtrip(task))
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
    broker, task = await _open(args.config)
    try:
        if args.scenario != "enqueue":
            await asyncio.gather(*(_roundtrip(task) for _ in range(WARMUP_TASKS)))
        cpu0 = time.process_time()
        if args.scenario == "e2e":
            out = await _e2e(task, args.n, args.window)
        elif args.scenario == "bulk":
            out = await _bulk(task, args.n)
        elif args.scenario == "enqueue":
            out = await _enqueue(task, args.n, args.window)
        elif args.scenario == "latency":
            out = await _latency(task, args.rate, args.seconds)
        else:
            raise SystemExit(f"unknown scenario {args.scenario!r}")
        out["client_cpu_s"] = time.process_time() - cpu0
    finally:
        await broker.shutdown()
    out["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print its figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.client")
    parser.add_argument("config", choices=["kiqstack", "stock_nats", "redis_list"])
    parser.add_argument("scenario", choices=["e2e", "bulk", "enqueue", "latency"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
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
