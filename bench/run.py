"""The benchmark orchestrator: ``python -m bench`` (``make bench``, ``make bench-smoke``).

Starts its own ``nats-server -js`` and ``redis-server`` (or uses ``--nats-url``/``--redis-url``,
which must be scratch servers: Redis databases 0 and 1 are flushed and every JetStream stream the
run creates is deleted), then runs each scenario for each configuration, back to back, so that the
ratios compare runs made on the same machine at the same time:

* (a) ``kiqstack``: ``python -m app worker`` as shipped, the client using ``app.tasks.broker``;
* (b) ``stock_nats``: taskiq-nats ``PullBasedJetStreamBroker`` + ``RedisAsyncResultBackend``,
  their defaults;
* (c) ``redis_list``: taskiq-redis ``ListQueueBroker`` + the same backend (at-most-once).

Every worker is a real worker process (``-w 1``), every client a separate process
(:mod:`bench.client`). The table goes to stdout; the JSON to ``bench/results/latest.json``
(``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import procs
from bench.load import run_load
from scripts.localinfra import find_nats_server, free_port, local_infra

CONFIGS = ("kiqstack", "stock_nats", "redis_list")
LABELS = {
    "kiqstack": "(a) kiqstack",
    "stock_nats": "(b) taskiq-nats stock",
    "redis_list": "(c) taskiq-redis ListQueue",
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "taskiq",
    "taskiq-nats",
    "taskiq-redis",
    "nats-py",
    "redis",
    "uvloop",
    "orjson",
    "hiredis",
    "fastapi",
    "uvicorn",
    "httptools",
    "pydantic",
)


@dataclass
class Plan:
    """What one run measures."""

    smoke: bool
    ns: list[int]
    window: int
    rate: float
    latency_seconds: float
    http_seconds: float
    http_connections: int
    repeat: int
    configs: list[str]
    scenarios: list[str]


@dataclass
class Infra:
    """Where the servers are, and the process ids of those we started."""

    nats_url: str
    redis_base: str
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def results_url(self) -> str:
        """Redis database holding task results (counted by DBSIZE in the drain scenario)."""
        return f"{self.redis_base}/1"

    @property
    def queue_url(self) -> str:
        """Redis database holding the ListQueueBroker queue."""
        return f"{self.redis_base}/0"


def _log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- environment of each configuration ----------------------------------------------------------
def _env(config: str, infra: Infra, workdir: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "REDIS_", "BENCH_", "TASK_", "WORKER_", "RESULT_"))
    }
    env.update(
        PYTHONPATH=str(procs.ROOT),
        NATS_URL=infra.nats_url,
        REDIS_URL=infra.results_url,
        BENCH_QUEUE_URL=infra.queue_url,
    )
    if config == "kiqstack":
        env.update(
            NATS_STREAM=f"kqb_{tag}",
            NATS_SUBJECT=f"kqb.{tag}.tasks",
            NATS_CONSUMER=f"kqbw_{tag}",
            NATS_DEAD_LETTER_STREAM=f"kqbdl_{tag}",
            NATS_DEAD_LETTER_SUBJECT=f"kqb.{tag}.dead",
            HOST="127.0.0.1",
            METRICS_PORT=str(free_port()),
            PORT=str(free_port()),
            SHUTDOWN_DELAY_SECONDS="0",
            PROMETHEUS_MULTIPROC_DIR=str(workdir),
        )
    elif config == "stock_nats":
        env.update(
            BENCH_STREAM=f"stk_{tag}",
            BENCH_SUBJECT=f"stk.{tag}",
            BENCH_DURABLE=f"stkd_{tag}",
        )
    else:
        env.update(BENCH_QUEUE=f"taskiq_{tag}")
    return env


def _worker_argv(config: str) -> list[str]:
    if config == "kiqstack":
        return [procs.python(), "-m", "app", "worker"]
    module = "bench.stock_nats" if config == "stock_nats" else "bench.stock_redis"
    return [procs.python(), "-m", "taskiq", "worker", f"{module}:broker", "-w", "1"]


async def _delete_streams(nats_url: str, names: list[str]) -> None:
    import nats

    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await client.close()


def _cleanup(config: str, env: dict[str, str], infra: Infra) -> None:
    streams = []
    if config == "kiqstack":
        streams = [env["NATS_STREAM"], env["NATS_DEAD_LETTER_STREAM"]]
    elif config == "stock_nats":
        streams = [env["BENCH_STREAM"]]
    if streams:
        asyncio.run(_delete_streams(infra.nats_url, streams))
    for url in (infra.results_url, infra.queue_url):
        with redis.Redis.from_url(url) as r:
            r.flushdb()


# -- one measurement ------------------------------------------------------------------------------
def _client(config: str, scenario: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [procs.python(), "-m", "bench.client", config, scenario, *args],
        env=env,
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {config} {scenario} failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _server_cpu(infra: Infra) -> dict[str, float]:
    return {name: procs.cpu_seconds(pid) for name, pid in infra.pids.items()}


def _with_worker(
    config: str, scenario: str, infra: Infra, workdir: Path, client_args: list[str]
) -> dict[str, Any]:
    env = _env(config, infra, workdir)
    worker = procs.Proc(_worker_argv(config), env, workdir / f"worker-{config}-{scenario}.log")
    try:
        servers_before = _server_cpu(infra)
        # The client's warm-up tasks wait for the worker to be up; CPU is sampled around the run.
        worker_before = worker.tree_cpu()
        result = _client(config, scenario, env, *client_args)
        result["worker_cpu_s"] = worker.tree_cpu() - worker_before
        after = _server_cpu(infra)
        result["server_cpu_s"] = {k: after[k] - servers_before[k] for k in after}
        result["worker_rss_mb"] = procs.peak_rss_mb(worker.main_pid())
        if not worker.alive():
            raise RuntimeError(f"worker {config} died:\n{worker.tail()}")
        return result
    except Exception:
        _log(f"worker log ({config}):\n{worker.tail()}")
        raise
    finally:
        worker.stop()
        _cleanup(config, env, infra)


def _drain(config: str, n: int, infra: Infra, workdir: Path, window: int) -> dict[str, Any]:
    env = _env(config, infra, workdir)
    worker: procs.Proc | None = None
    try:
        enqueue = _client(config, "enqueue", env, "--n", str(n), "--window", str(window))
        counter = redis.Redis.from_url(infra.results_url)
        worker = procs.Proc(_worker_argv(config), env, workdir / f"worker-{config}-drain.log")
        first_t: float | None = None
        first_count = 0
        deadline = time.monotonic() + 60 + n / 100
        cpu_at_first = 0.0
        while True:
            count = int(counter.dbsize())
            now = time.perf_counter()
            if first_t is None and count > 0:
                first_t, first_count = now, count
                cpu_at_first = worker.tree_cpu()
            if count >= n:
                break
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"drain {config}: {count}/{n} results\n{worker.tail()}")
            time.sleep(0.002)
        assert first_t is not None  # noqa: S101
        elapsed = now - first_t
        counter.close()
        return {
            "n": n,
            "seconds": elapsed,
            "tasks_per_s": (n - first_count) / elapsed if elapsed > 0 else float("nan"),
            "enqueue_per_s": enqueue["kiq_per_s"],
            "worker_cpu_s": worker.tree_cpu() - cpu_at_first,
            "worker_rss_mb": procs.peak_rss_mb(worker.main_pid()),
        }
    finally:
        if worker is not None:
            worker.stop()
        _cleanup(config, env, infra)


def _http(plan: Plan, infra: Infra, workdir: Path) -> dict[str, Any]:
    env = _env("kiqstack", infra, workdir)
    server = procs.Proc([procs.python(), "-m", "app", "server"], env, workdir / "server.log")
    base = f"http://127.0.0.1:{env['PORT']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError(f"server not ready:\n{server.tail()}")
            time.sleep(0.1)
        url = f"{base}/tasks/app.tasks.example:noop"
        with httpx.Client() as client:
            for _ in range(50):  # warm-up
                client.post(url, json={"args": [], "kwargs": {}}).raise_for_status()
        cpu0 = server.tree_cpu()
        result = run_load(url, plan.http_seconds, plan.http_connections)
        result["server_cpu_s"] = server.tree_cpu() - cpu0
        result["server_rss_mb"] = procs.peak_rss_mb(server.pid)
        return result
    except Exception:
        _log(f"server log:\n{server.tail()}")
        raise
    finally:
        server.stop()
        _cleanup("kiqstack", env, infra)


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (all figures of one run stay together)."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        chosen["runs"] = [r[key] for r in runs]
    return chosen


# -- the run --------------------------------------------------------------------------------------
def _machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _versions(infra: Infra) -> dict[str, str]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    with contextlib.suppress(Exception):
        versions["nats-server"] = (
            subprocess.run(
                [find_nats_server(), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            if "nats-server" in infra.pids
            else "external"
        )
    with contextlib.suppress(Exception), redis.Redis.from_url(infra.results_url) as r:
        info = r.info("server")
        versions["redis-server"] = str(info.get("redis_version"))
    versions["wrk"] = "installed" if shutil.which("wrk") else "not installed (asyncio client)"
    return versions


@contextlib.contextmanager
def _infra(nats_url: str | None, redis_url: str | None) -> Iterator[Infra]:
    if nats_url and redis_url:
        yield Infra(nats_url=nats_url, redis_base=redis_url.rstrip("/").rsplit("/", 1)[0])
        return
    with local_infra() as (nats, rds):
        assert nats.process is not None  # noqa: S101
        assert rds.process is not None  # noqa: S101
        yield Infra(
            nats_url=nats_url or f"nats://{nats.host}:{nats.port}",
            redis_base=(redis_url.rstrip("/").rsplit("/", 1)[0] if redis_url else "")
            or f"redis://{rds.host}:{rds.port}",
            pids={"nats-server": nats.process.pid, "redis-server": rds.process.pid},
        )


def measure(plan: Plan, infra: Infra, workdir: Path) -> dict[str, Any]:
    """Run every scenario for every configuration; return the raw figures per configuration."""
    raw: dict[str, dict[str, Any]] = {c: {} for c in plan.configs}
    for scenario in plan.scenarios:
        if scenario == "http":
            continue
        cases: list[tuple[str, int | None]] = (
            [(scenario, None)] if scenario == "latency" else [(scenario, n) for n in plan.ns]
        )
        for name, n in cases:
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in plan.configs}
            for attempt in range(plan.repeat):
                order = plan.configs if attempt % 2 == 0 else list(reversed(plan.configs))
                for config in order:
                    label = f"{name} n={n}" if n else f"{name} {plan.rate:g}/s"
                    _log(f"{label} {config} (run {attempt + 1}/{plan.repeat})")
                    if name == "drain":
                        assert n is not None  # noqa: S101
                        res = _drain(config, n, infra, workdir, plan.window)
                    elif name == "latency":
                        args = ["--rate", str(plan.rate), "--seconds", str(plan.latency_seconds)]
                        res = _with_worker(config, name, infra, workdir, args)
                    else:
                        args = ["--n", str(n), "--window", str(plan.window)]
                        res = _with_worker(config, name, infra, workdir, args)
                    runs[config].append(res)
            for config in plan.configs:
                key = "p50" if name == "latency" else "tasks_per_s"
                chosen = _median_run(runs[config], key)
                if n is None:
                    raw[config][name] = chosen
                else:
                    raw[config].setdefault(name, {})[str(n)] = chosen
    if "http" in plan.scenarios and "kiqstack" in plan.configs:
        _log("http dispatch (kiqstack server)")
        raw["kiqstack"]["http"] = _http(plan, infra, workdir)
    return raw


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def _get(raw: dict[str, Any], *path: str) -> Any:
    node: Any = raw
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def summarize(plan: Plan, raw: dict[str, Any]) -> dict[str, Any]:
    """Ratios, headline figures and targets from the raw figures."""
    big = str(max(plan.ns))
    a, b, c = "kiqstack", "stock_nats", "redis_list"

    def rate(config: str, scenario: str) -> float | None:
        value = _get(raw, config, scenario, big, "tasks_per_s")
        return float(value) if value is not None else None

    ratios = {
        "e2e_vs_stock": _ratio(rate(a, "e2e"), rate(b, "e2e")),
        "e2e_vs_redis_list": _ratio(rate(a, "e2e"), rate(c, "e2e")),
        "drain_vs_stock": _ratio(rate(a, "drain"), rate(b, "drain")),
        "drain_vs_redis_list": _ratio(rate(a, "drain"), rate(c, "drain")),
        "bulk_vs_stock": _ratio(rate(a, "bulk"), rate(b, "bulk")),
        "bulk_vs_redis_list": _ratio(rate(a, "bulk"), rate(c, "bulk")),
    }
    lat = _get(raw, a, "latency") or {}
    latency_ms = {k: lat.get(k) for k in ("p50", "p95", "p99")}
    rss = [
        v
        for v in (
            *(
                _get(raw, a, s, n, "worker_rss_mb")
                for s in ("e2e", "bulk", "drain")
                for n in map(str, plan.ns)
            ),
            _get(raw, a, "latency", "worker_rss_mb"),
        )
        if v is not None
    ]
    worker_rss = round(max(rss), 1) if rss else None
    http = _get(raw, a, "http") or {}
    http_rps = http.get("rps")
    server_rss = http.get("server_rss_mb")

    def target(value: float | None, goal: float, *, at_most: bool = False) -> dict[str, Any]:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        return {"value": value, "goal": f"{'<=' if at_most else '>='} {goal}", "met": met}

    targets = {
        "e2e_vs_stock": target(ratios["e2e_vs_stock"], 2.0),
        "e2e_vs_redis_list": target(ratios["e2e_vs_redis_list"], 1.3),
        "drain_vs_stock": target(ratios["drain_vs_stock"], 1.5),
        "latency_p50_ms": target(latency_ms["p50"], 5.0, at_most=True),
        "latency_p99_ms": target(latency_ms["p99"], 25.0, at_most=True),
        "worker_rss_mb": target(worker_rss, 80.0, at_most=True),
        "http_dispatch_rps": target(http_rps, 2000.0),
    }
    return {
        "ratios": ratios,
        "latency_ms": latency_ms,
        "http_dispatch_rps": http_rps,
        "worker_rss_mb": worker_rss,
        "server_rss_mb": round(server_rss, 1) if server_rss else None,
        "targets": targets,
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(plan: Plan, raw: dict[str, Any], summary: dict[str, Any]) -> str:
    """The results as a Markdown table (also printed by ``python -m bench``)."""
    configs = plan.configs
    head = ["scenario", *(LABELS[c] for c in configs)]
    if "stock_nats" in configs:
        head.append("a/b")
    if "redis_list" in configs:
        head.append("a/c")
    rows: list[list[str]] = []

    def add(label: str, values: list[float | None], digits: int = 0, lower: bool = False) -> None:
        row = [label, *(_fmt(v, digits) for v in values)]
        base = values[0] if configs[0] == "kiqstack" else None
        for other in ("stock_nats", "redis_list"):
            if other in configs:
                v = values[configs.index(other)]
                r = _ratio(v, base) if lower else _ratio(base, v)
                row.append(f"{r:.2f}x" if r is not None else "-")
        rows.append(row)

    for scenario, title in (
        ("e2e", "end to end, tasks/s"),
        ("bulk", "kiq all then await all, tasks/s"),
        ("drain", "drain, tasks/s"),
    ):
        for n in plan.ns:
            if scenario in plan.scenarios:
                values = [_get(raw, c, scenario, str(n), "tasks_per_s") for c in configs]
                add(f"{title} (N={n:,})", values)
    if "latency" in plan.scenarios:
        for q in ("p50", "p95", "p99"):
            values = [_get(raw, c, "latency", q) for c in configs]
            add(f"latency {q} ms at {plan.rate:g}/s", values, 1, lower=True)
    worker_rss = []
    for c in configs:
        found = [
            _get(raw, c, s, n, "worker_rss_mb")
            for s in ("e2e", "bulk", "drain")
            for n in map(str, plan.ns)
        ]
        found.append(_get(raw, c, "latency", "worker_rss_mb"))
        vals = [v for v in found if v is not None]
        worker_rss.append(max(vals) if vals else None)
    add("worker peak RSS, MB", worker_rss, 1, lower=True)
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    http = _get(raw, "kiqstack", "http")
    if http:
        lines.append("")
        lines.append(
            f"HTTP dispatch (`POST /tasks/{{name}}`, one uvicorn process, {http['connections']} "
            f"connections, {http['tool']}): **{http['rps']:,.0f} requests/s**, "
            f"p50 {_fmt(http['latency_ms']['p50'], 1)} ms, "
            f"p99 {_fmt(http['latency_ms']['p99'], 1)} ms, non-2xx {http['non_2xx']}; "
            f"server peak RSS {http['server_rss_mb']:.1f} MB."
        )
    return "\n".join(lines)


def build_plan(args: argparse.Namespace) -> Plan:
    """The plan for full or smoke mode, with command-line overrides."""
    if args.smoke:
        plan = Plan(True, [200], 50, 50.0, 2.0, 2.0, 16, 1, list(CONFIGS), [])
    else:
        plan = Plan(False, [2000, 20000], 100, 200.0, 10.0, 10.0, 64, 1, list(CONFIGS), [])
    plan.scenarios = ["e2e", "bulk", "drain", "latency", "http"]
    if args.n:
        plan.ns = args.n
    if args.repeat:
        plan.repeat = args.repeat
    if args.window:
        plan.window = args.window
    if args.configs:
        plan.configs = [c for c in CONFIGS if c in args.configs]
    if args.scenarios:
        plan.scenarios = args.scenarios
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small N; checks the harness only")
    parser.add_argument("--nats-url", help="use this NATS (JetStream) instead of starting one")
    parser.add_argument("--redis-url", help="use this scratch Redis (dbs 0 and 1 are flushed)")
    parser.add_argument("--n", type=int, nargs="+", help="task counts (default 2000 20000)")
    parser.add_argument("--repeat", type=int, help="runs per case; the median is kept")
    parser.add_argument("--window", type=int, help="concurrent callers in the e2e scenario")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS)
    parser.add_argument(
        "--scenarios", nargs="+", choices=["e2e", "bulk", "drain", "latency", "http"]
    )
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/latest.json)")
    args = parser.parse_args(argv)
    plan = build_plan(args)
    out_path: Path = args.out or (RESULTS_DIR / ("smoke.json" if plan.smoke else "latest.json"))
    started = time.time()
    with _infra(args.nats_url, args.redis_url) as infra:
        workdir = Path(tempfile.mkdtemp(prefix="kiqstack-bench-"))
        try:
            machine = _machine()
            versions = _versions(infra)
            raw = measure(plan, infra, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(plan, raw)
    report = {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if plan.smoke else "full",
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "versions": versions,
        "parameters": {
            "n": plan.ns,
            "e2e_window": plan.window,
            "latency_rate_per_s": plan.rate,
            "latency_seconds": plan.latency_seconds,
            "http_seconds": plan.http_seconds,
            "http_connections": plan.http_connections,
            "repeat": plan.repeat,
            "ratios_at_n": max(plan.ns),
        },
        **summary,
        "configurations": raw,
        "table_markdown": table(plan, raw, summary),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(report["table_markdown"] + "\n\n")
    sys.stdout.write("ratios: " + json.dumps(summary["ratios"]) + "\n")
    sys.stdout.write(
        "targets: " + json.dumps({k: v["met"] for k, v in summary["targets"].items()}) + "\n"
    )
    shown = out_path.relative_to(procs.ROOT) if out_path.is_relative_to(procs.ROOT) else out_path
    sys.stdout.write(f"wrote {shown}\n")
    if plan.smoke:
        json.loads(out_path.read_text())
    return 0
