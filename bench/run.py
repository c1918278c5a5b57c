"""The benchmark orchestrator: ``python -m bench`` (``make bench``, ``make bench-smoke``).

Starts its own ``nats-server -js`` and ``redis-server`` (or uses ``--nats-url``/``--redis-url``,
which must be scratch servers: Redis databases 0 and 1 are flushed and every JetStream stream the
run creates is deleted), then measures every configuration of :mod:`bench.configs` (kiqstack,
stock taskiq, Celery, Dramatiq, arq) in rounds. Each round runs every scenario for every
configuration, in an order rotated from round to round, and records the load average before and
after; the report keeps the per-round figures and their medians, so that ratios compare runs made
on the same machine at the same time.

Every worker is a real worker process, every client a separate process (:mod:`bench.client`). The
table goes to stdout; the JSON to ``bench/results/latest.json`` (``--out``).
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import procs, report
from bench.configs import CONFIGS, Config
from bench.load import run_load
from scripts.localinfra import find_nats_server, free_port, local_infra

SCENARIOS = ("e2e", "latency", "drain", "scale", "http", "bulk")
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
    "celery",
    "kombu",
    "billiard",
    "dramatiq",
)


@dataclass
class Plan:
    """What one run measures."""

    smoke: bool
    e2e_n: int
    drain_n: int
    scale_ns: list[int]
    window: int
    rate: float
    latency_seconds: float
    http_seconds: float
    http_connections: int
    repeat: int
    configs: list[str]
    scenarios: list[str]

    def runs(self, config: str, scenario: str) -> bool:
        """Tell whether ``config`` is measured in ``scenario``."""
        return (
            config in self.configs
            and scenario in self.scenarios
            and (scenario in CONFIGS[config].scenarios)
        )


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
        """Redis database holding the Redis brokers' queues (ListQueue, Celery, Dramatiq, arq)."""
        return f"{self.redis_base}/0"

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the servers we started."""
        return {name: procs.cpu_seconds(pid) for name, pid in self.pids.items()}


def _log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- environment of each configuration ----------------------------------------------------------
def _env(cfg: Config, infra: Infra, workdir: Path) -> dict[str, str]:
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
        **cfg.names(),
        **cfg.env,
    )
    if cfg.client == "kiqstack":
        env.update(
            HOST="127.0.0.1",
            METRICS_PORT=str(free_port()),
            PORT=str(free_port()),
            SHUTDOWN_DELAY_SECONDS="0",
            PROMETHEUS_MULTIPROC_DIR=str(workdir),
        )
    return env


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


def _cleanup(env: dict[str, str], infra: Infra) -> None:
    keys = ("NATS_STREAM", "NATS_DEAD_LETTER_STREAM", "BENCH_STREAM")
    streams = [env[k] for k in keys if k in env]
    if streams:
        asyncio.run(_delete_streams(infra.nats_url, streams))
    for url in (infra.results_url, infra.queue_url):
        with redis.Redis.from_url(url) as r:
            r.flushdb()


def _done_counter(cfg: Config, env: dict[str, str], infra: Infra, n: int) -> Any:
    """How many tasks have a stored result (for the drain scenario)."""
    if cfg.client == "arq":
        # arq keeps queue, jobs and results in one database; a finished job leaves the queue in
        # the same transaction that stores its result.
        client = redis.Redis.from_url(infra.queue_url)
        return client, lambda: n - int(client.zcard(env["BENCH_QUEUE"]))
    client = redis.Redis.from_url(infra.results_url)
    return client, lambda: int(client.dbsize())


# -- one measurement ------------------------------------------------------------------------------
class Client:
    """A client process that warms up, says ``ready``, and measures after ``go`` on stdin."""

    def __init__(self, cfg: Config, scenario: str, env: dict[str, str], args: list[str]) -> None:
        """Start the client."""
        self.label = f"client {cfg.name} {scenario}"
        self.popen = subprocess.Popen(
            [cfg.python(), "-m", "bench.client", cfg.client, scenario, "--handshake", *args],
            env=env,
            cwd=procs.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self, timeout: float = 120) -> None:
        """Wait for the end of the warm-up."""
        assert self.popen.stdout is not None  # noqa: S101
        deadline = time.monotonic() + timeout
        line = self.popen.stdout.readline()
        if line.strip() != "ready" or time.monotonic() > deadline:
            self.popen.kill()
            _, err = self.popen.communicate()
            raise RuntimeError(f"{self.label} failed:\n{line}{err[-4000:]}")

    def go(self, timeout: float = 900) -> dict[str, Any]:
        """Let the client measure; return its figures."""
        out, err = self.popen.communicate("go\n", timeout=timeout)
        if self.popen.returncode != 0:
            raise RuntimeError(f"{self.label} failed:\n{err[-4000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


def _per_task_ms(seconds: float, n: int) -> float | None:
    return round(seconds / n * 1000, 4) if n > 0 else None


def _machine_share(busy0: float, wall0: float, ours: float) -> dict[str, float]:
    """Cores the whole machine kept busy since ``busy0``, and how many went to other processes.

    ``other_cores`` is CPU used by processes that are not part of this measurement (other users
    of a shared machine, the orchestrator): a measurement with a large value ran on less.
    """
    wall = time.perf_counter() - wall0
    busy = procs.machine_busy_seconds() - busy0
    if wall <= 0:
        return {"machine_busy_cores": float("nan"), "other_cores": float("nan")}
    return {
        "machine_busy_cores": round(busy / wall, 2),
        "other_cores": round(max(0.0, busy - ours) / wall, 2),
    }


def _session(
    cfg: Config, plan: Plan, infra: Infra, workdir: Path, scenarios: list[str]
) -> dict[str, Any]:
    """One worker, then each of ``scenarios`` (e2e, latency) as a client run against it."""
    env = _env(cfg, infra, workdir)
    worker = procs.Proc(cfg.worker(), env, workdir / f"worker-{cfg.name}.log")
    out: dict[str, Any] = {}
    try:
        for scenario in scenarios:
            if scenario == "latency":
                args = ["--rate", str(plan.rate), "--seconds", str(plan.latency_seconds)]
            else:
                args = ["--n", str(plan.e2e_n), "--window", str(plan.window)]
            load = procs.load_average()
            client = Client(cfg, scenario, env, args)
            client.ready()
            servers0, worker0 = infra.server_cpu(), worker.tree_cpu()
            busy0, wall0 = procs.machine_busy_seconds(), time.perf_counter()
            result = client.go()
            worker_cpu = worker.tree_cpu() - worker0
            servers = {k: v - servers0[k] for k, v in infra.server_cpu().items()}
            ours = result["client_cpu_s"] + worker_cpu + sum(servers.values())
            n = int(result["n"])
            result.update(
                load_before=load,
                **_machine_share(busy0, wall0, ours),
                worker_cpu_s=worker_cpu,
                server_cpu_s=servers,
                cpu_ms_per_task={
                    "client": _per_task_ms(result["client_cpu_s"], n),
                    "worker": _per_task_ms(worker_cpu, n),
                    **{k: _per_task_ms(v, n) for k, v in servers.items()},
                },
                worker_memory=worker.memory(),
            )
            if not worker.alive():
                raise RuntimeError(f"worker {cfg.name} died:\n{worker.tail()}")
            out[scenario] = result
        return out
    except Exception:
        _log(f"worker log ({cfg.name}):\n{worker.tail()}")
        raise
    finally:
        worker.stop()
        _cleanup(env, infra)


def _drain(cfg: Config, n: int, plan: Plan, infra: Infra, workdir: Path) -> dict[str, Any]:
    """Queue ``n`` tasks with no worker, start one, time it from first to last stored result."""
    env = _env(cfg, infra, workdir)
    worker: procs.Proc | None = None
    counter, count_done = _done_counter(cfg, env, infra, n)
    try:
        client = Client(cfg, "enqueue", env, ["--n", str(n), "--window", str(plan.window)])
        client.ready()
        enqueue = client.go()
        load = procs.load_average()
        worker = procs.Proc(cfg.worker(), env, workdir / f"worker-{cfg.name}-drain.log")
        first_t: float | None = None
        first_count = 0
        deadline = time.monotonic() + 120 + n / 20
        cpu_at_first = 0.0
        servers0: dict[str, float] = {}
        while True:
            count = count_done()
            now = time.perf_counter()
            if first_t is None and count > 0:
                first_t, first_count = now, count
                cpu_at_first, servers0 = worker.tree_cpu(), infra.server_cpu()
                busy0, wall0 = procs.machine_busy_seconds(), now
            if count >= n:
                break
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"drain {cfg.name}: {count}/{n} results\n{worker.tail()}")
            time.sleep(0.005)
        assert first_t is not None  # noqa: S101
        elapsed = now - first_t
        done = n - first_count
        worker_cpu = worker.tree_cpu() - cpu_at_first
        servers = {k: v - servers0[k] for k, v in infra.server_cpu().items()}
        return {
            "n": n,
            "seconds": elapsed,
            "tasks_per_s": done / elapsed if elapsed > 0 else float("nan"),
            "enqueue_per_s": enqueue["kiq_per_s"],
            "load_before": load,
            **_machine_share(busy0, wall0, worker_cpu + sum(servers.values())),
            "worker_cpu_s": worker_cpu,
            "server_cpu_s": servers,
            "cpu_ms_per_task": {
                "enqueue_client": _per_task_ms(enqueue["client_cpu_s"], n),
                "worker": _per_task_ms(worker_cpu, done),
                **{k: _per_task_ms(v, done) for k, v in servers.items()},
            },
            "worker_memory": worker.memory(),
        }
    except Exception:
        if worker is not None:
            _log(f"worker log ({cfg.name}):\n{worker.tail()}")
        raise
    finally:
        counter.close()
        if worker is not None:
            worker.stop()
        _cleanup(env, infra)


def _http(plan: Plan, infra: Infra, workdir: Path) -> dict[str, Any]:
    env = _env(CONFIGS["kiqstack"], infra, workdir)
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
        _cleanup(env, infra)


def _bulk(plan: Plan, config: str, infra: Infra, workdir: Path) -> dict[str, Any]:
    cfg = CONFIGS[config]
    env = _env(cfg, infra, workdir)
    worker = procs.Proc(cfg.worker(), env, workdir / f"worker-{cfg.name}-bulk.log")
    try:
        client = Client(cfg, "bulk", env, ["--n", str(plan.e2e_n)])
        client.ready()
        return client.go()
    finally:
        worker.stop()
        _cleanup(env, infra)


# -- the rounds -----------------------------------------------------------------------------------
def _rotated(configs: list[str], round_index: int) -> list[str]:
    k = round_index % len(configs) if configs else 0
    return configs[k:] + configs[:k]


def measure_round(plan: Plan, infra: Infra, workdir: Path, index: int) -> dict[str, Any]:
    """One round: every scenario of every configuration, in this round's order."""
    order = _rotated(plan.configs, index)
    started = time.time()
    record: dict[str, Any] = {
        "round": index + 1,
        "order": order,
        "load_before": procs.load_average(),
        "results": {c: {} for c in order},
    }
    tag = f"round {index + 1}/{plan.repeat}"
    for config in order:
        wanted = [s for s in ("e2e", "latency") if plan.runs(config, s)]
        if wanted:
            _log(f"{tag}: {config} {' + '.join(wanted)}")
            record["results"][config].update(
                _session(CONFIGS[config], plan, infra, workdir, wanted)
            )
    for config in order:
        if plan.runs(config, "drain"):
            _log(f"{tag}: {config} drain of {plan.drain_n:,}")
            record["results"][config]["drain"] = _drain(
                CONFIGS[config], plan.drain_n, plan, infra, workdir
            )
    if plan.runs("kiqstack", "scale"):
        record["scale"] = {}
        for n in plan.scale_ns:
            _log(f"{tag}: kiqstack drain of {n:,} (scale)")
            record["scale"][str(n)] = _drain(CONFIGS["kiqstack"], n, plan, infra, workdir)
    for config in order:
        if plan.runs(config, "bulk"):
            _log(f"{tag}: {config} bulk")
            record["results"][config]["bulk"] = _bulk(plan, config, infra, workdir)
    if plan.runs("kiqstack", "http"):
        _log(f"{tag}: kiqstack HTTP dispatch")
        record["http"] = _http(plan, infra, workdir)
    record["load_after"] = procs.load_average()
    record["seconds"] = round(time.time() - started, 1)
    _log(f"{tag} done in {record['seconds']:.0f} s, load {record['load_after']}")
    return record


# -- the run --------------------------------------------------------------------------------------
def _machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": mem_total,
        "load_average_at_start": procs.load_average(),
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
        arq = CONFIGS["arq"].python()
        code = "import arq.version, redis; print(arq.version.VERSION, redis.__version__)"
        out = subprocess.run([arq, "-c", code], capture_output=True, text=True, check=True)
        versions["arq"], versions["redis (arq venv)"] = out.stdout.split()
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


def build_plan(args: argparse.Namespace) -> Plan:
    """The plan for full or smoke mode, with command-line overrides."""
    configs = [c for c in CONFIGS if not args.configs or c in args.configs]
    if args.smoke:
        plan = Plan(True, 200, 300, [300], 50, 50.0, 1.0, 1.0, 16, 1, configs, [])
        plan.scenarios = ["e2e", "latency", "drain", "scale", "http"]
    else:
        plan = Plan(
            False, 5000, 20_000, [1000, 10_000, 100_000], 100, 200.0, 10.0, 10.0, 64, 3, configs, []
        )
        plan.scenarios = ["e2e", "latency", "drain", "scale", "http"]
    if args.e2e_n:
        plan.e2e_n = args.e2e_n
    if args.drain_n:
        plan.drain_n = args.drain_n
    if args.scale_n:
        plan.scale_ns = args.scale_n
    if args.repeat:
        plan.repeat = args.repeat
    if args.window:
        plan.window = args.window
    if args.scenarios:
        plan.scenarios = args.scenarios
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small N; checks the harness only")
    parser.add_argument("--nats-url", help="use this NATS (JetStream) instead of starting one")
    parser.add_argument("--redis-url", help="use this scratch Redis (dbs 0 and 1 are flushed)")
    parser.add_argument("--repeat", type=int, help="rounds (default 3); medians are reported")
    parser.add_argument("--e2e-n", type=int, help="tasks per end-to-end run (default 5000)")
    parser.add_argument("--drain-n", type=int, help="tasks queued in the drain (default 20000)")
    parser.add_argument(
        "--scale-n", type=int, nargs="+", help="kiqstack drain sizes (default 1000 10000 100000)"
    )
    parser.add_argument("--window", type=int, help="concurrent callers (default 100)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS))
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS)
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
            rounds = [measure_round(plan, infra, workdir, i) for i in range(plan.repeat)]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    machine["load_average_at_end"] = procs.load_average()
    parameters = {
        "e2e_n": plan.e2e_n,
        "e2e_window": plan.window,
        "drain_n": plan.drain_n,
        "scale_n": plan.scale_ns,
        "latency_rate_per_s": plan.rate,
        "latency_seconds": plan.latency_seconds,
        "http_seconds": plan.http_seconds,
        "http_connections": plan.http_connections,
        "rounds": plan.repeat,
        "scenarios": plan.scenarios,
    }
    result = report.build(plan.configs, rounds, parameters)
    doc = {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if plan.smoke else "full",
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "versions": versions,
        "parameters": parameters,
        "setup": {
            c: {"label": CONFIGS[c].label, "setup": CONFIGS[c].setup, "tuned": CONFIGS[c].tuned}
            for c in plan.configs
        },
        **result,
        "rounds": rounds,
    }
    doc["table_markdown"] = report.table(doc)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    sys.stdout.write(doc["table_markdown"] + "\n\n")
    sys.stdout.write("targets: " + json.dumps({k: v["met"] for k, v in doc["targets"].items()}))
    shown = out_path.relative_to(procs.ROOT) if out_path.is_relative_to(procs.ROOT) else out_path
    sys.stdout.write(f"\nwrote {shown} in {doc['duration_s']:.0f} s\n")
    return 0
