"""Where kiqstack's time and memory go: ``python -m bench.profile`` (``make bench-profile``).

* **worker drain**: ``--n`` tasks queued, then one ``python -m app worker`` started; py-spy samples
  the worker process until the queue is drained.
* **client kiq + wait**: the end-to-end client (100 callers, ``kiq()`` + ``wait_result()``) run
  under py-spy against an unprofiled worker.
* **worker imports**: the worker started with ``PYTHONPROFILEIMPORTTIME=1``: the modules it loads,
  by top-level package, and what each heavy package costs in RSS when imported alone.
* **startup RSS** of every configuration's worker, idle, right after it started.

Each profile is summarized as self and inclusive shares of samples by function, and converted
into microseconds of CPU per task with the CPU the process used per task during the profile
(from ``/proc``). Writes ``bench/results/profile.json`` and ``bench/results/profile.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.configs import CONFIGS
from bench.run import RESULTS_DIR, Client, Infra, _cleanup, _env, _infra

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _pyspy() -> str:
    return str(Path(procs.python()).parent / "py-spy")


def _frame(text: str) -> tuple[str, str]:
    """``(function, file)`` of a py-spy frame ``func (file:line)``."""
    found = FRAME.match(text)
    if not found:
        return text, ""
    return found["func"], found["file"]


def _package(file: str) -> str:
    """The package a frame's file belongs to (``taskiq``, ``app``, ``asyncio``, ...)."""
    marker = "site-packages/"
    if marker in file:
        file = file.split(marker, 1)[1]
    elif "/app/" in file or file.startswith("app/"):
        return "app (kiqstack)"
    elif "/lib/python3" in file:
        return "stdlib:" + file.rsplit("/lib/python3", 1)[1].split("/", 2)[1].removesuffix(".py")
    head = file.split("/", 1)[0].removesuffix(".py")
    return head or "?"


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares by function and self shares by package."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        func, file = frames[-1]
        own[f"{func} ({_short(file)})"] += count
        package[_package(file)] += count
        for name in {f"{fn} ({_short(fl)})" for fn, fl in frames}:
            incl[name] += count

    def share(counter: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in counter.most_common(n)] if total else []

    # The trunk every sample passes through (runpy, the taskiq CLI, the event loop) says nothing.
    for name, count in list(incl.items()):
        if count >= 0.9 * total:
            del incl[name]

    kiq = collections.Counter({k: v for k, v in incl.items() if "app/" in k and "bench/" not in k})
    return {
        "samples": total,
        "self": share(own, top),
        "inclusive": share(incl, top),
        "packages_self": share(package, top),
        "kiqstack_inclusive": share(kiq, top),
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail if marker == "site-packages/" else tail.split("/", 1)[-1]
    if "/app/" in file:
        return "app/" + file.split("/app/", 1)[1]
    return file


def _record(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [_pyspy(), "record", "--pid", str(pid), "-r", str(rate), "-F", "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop_recording(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()


def _worker_pid(worker: procs.Proc, timeout: float = 30) -> int:
    """The process running tasks: taskiq forks it from its supervisor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = procs.descendants(worker.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError(f"no worker child process:\n{worker.tail()}")


def profile_drain(infra: Infra, workdir: Path, n: int, rate: int) -> dict[str, Any]:
    """py-spy of one worker process draining ``n`` queued tasks."""
    cfg = CONFIGS["kiqstack"]
    env = _env(cfg, infra, workdir)
    raw = workdir / "drain.txt"
    try:
        client = Client(cfg, "enqueue", env, ["--n", str(n), "--window", "100"])
        client.ready()
        client.go()
        counter = redis.Redis.from_url(infra.results_url)
        worker = procs.Proc(cfg.worker(), env, workdir / "worker-profile.log")
        child = _worker_pid(worker)
        # Sample from the first stored result on: the worker's startup (imports) is not the path.
        deadline = time.monotonic() + 60
        while int(counter.dbsize()) == 0:
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"no result stored\n{worker.tail()}")
            time.sleep(0.002)
        spy = _record(child, raw, rate)
        time.sleep(0.3)  # py-spy attached
        cpu0 = procs.cpu_seconds(child)
        done0 = int(counter.dbsize())
        deadline = time.monotonic() + 60 + n / 50
        while int(counter.dbsize()) < n:
            if time.monotonic() > deadline or not worker.alive():
                raise RuntimeError(f"drain did not finish\n{worker.tail()}")
            time.sleep(0.01)
        cpu = procs.cpu_seconds(child) - cpu0
        _stop_recording(spy)
        worker.stop()
        counter.close()
        done = n - done0
        return {
            "tasks": done,
            "worker_cpu_ms_per_task": round(cpu / done * 1000, 4),
            **summarize(raw),
        }
    finally:
        _cleanup(env, infra)


def profile_client(infra: Infra, workdir: Path, n: int, rate: int) -> dict[str, Any]:
    """py-spy of the end-to-end client (100 callers) against an unprofiled worker."""
    cfg = CONFIGS["kiqstack"]
    env = _env(cfg, infra, workdir)
    raw = workdir / "client.txt"
    worker = procs.Proc(cfg.worker(), env, workdir / "worker-client-profile.log")
    try:
        client = Client(cfg, "e2e", env, ["--n", str(n), "--window", "100"])
        client.ready()
        spy = _record(client.popen.pid, raw, rate)
        time.sleep(0.5)  # py-spy attached
        result = client.go()
        _stop_recording(spy)
        return {
            "tasks": n,
            "tasks_per_s": result["tasks_per_s"],
            "client_cpu_ms_per_task": round(result["client_cpu_s"] / n * 1000, 4),
            **summarize(raw),
        }
    finally:
        worker.stop()
        _cleanup(env, infra)


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def worker_imports(infra: Infra, workdir: Path) -> dict[str, Any]:
    """What ``python -m app worker`` imports (``PYTHONPROFILEIMPORTTIME``) and RSS per package."""
    cfg = CONFIGS["kiqstack"]
    env = _env(cfg, infra, workdir)
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    log = workdir / "worker-imports.log"
    worker = procs.Proc(cfg.worker(), env, log)
    try:
        child = _worker_pid(worker)
        time.sleep(4)  # started and idle
        startup = {
            "worker_process_rss_mb": round(procs.rss_mb(child), 1),
            "supervisor_rss_mb": round(procs.rss_mb(worker.pid), 1),
        }
    finally:
        worker.stop()
        _cleanup(env, infra)
    modules: dict[str, int] = {}
    entries: list[tuple[int, str, int]] = []  # (depth, module, cumulative µs), children first
    # `python -m app worker` runs taskiq's process manager in-process (no exec: one import log);
    # the worker process it forks logs its own late imports after the supervisor's.
    text = log.read_text(errors="replace")
    segments = text.split("import time: self [us] | cumulative | imported package")
    pre_exec = sum(1 for line in segments[-2].splitlines() if IMPORT_LINE.search(line))
    for line in segments[-1].splitlines():
        found = IMPORT_LINE.search(line)
        if found:
            modules[found[4]] = modules.get(found[4], 0) + int(found[1])
            entries.append((len(found[3]), found[4], int(found[2])))
    by_package: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for name, self_us in modules.items():
        top = name.split(".", 1)[0]
        by_package[top] += self_us
        counts[top] += 1
    heavy = [p for p, _ in by_package.most_common(14) if not p.startswith("_")]
    return {
        **startup,
        "modules": len(modules),
        "modules_before_exec": pre_exec,
        "packages": [
            {"package": p, "modules": counts[p], "self_import_ms": round(us / 1000, 1)}
            for p, us in by_package.most_common(30)
        ],
        # The package itself, not any module under it: app.lean_imports makes taskiq's attempt
        # at `fastapi.params` fail at once, which the import log still lists.
        "web_framework_loaded": sorted(
            p
            for p in ("fastapi", "starlette", "uvicorn", "aiohttp", "httptools", "httpx")
            if p in modules
        ),
        "rss_alone_mb": _rss_alone(heavy),
        "imported_via": _importers(entries, heavy),
    }


def _importers(entries: list[tuple[int, str, int]], packages: list[str]) -> dict[str, str]:
    """For each package, the chain of imports that first loaded it (importer last)."""
    out: dict[str, str] = {}
    for i, (depth, name, _) in enumerate(entries):
        top = name.split(".", 1)[0]
        if top not in packages or top in out:
            continue
        chain, level = [], depth
        for outer_depth, outer, cumulative in entries[i + 1 :]:
            if outer_depth < level:
                chain.append(f"{outer} ({cumulative / 1000:.0f} ms)")
                level = outer_depth
                if level <= 1:
                    break
        out[top] = " <- ".join(chain)
    return out


def _rss_alone(packages: list[str]) -> dict[str, float]:
    """RSS a fresh interpreter gains by importing each package alone (overlaps counted twice)."""
    code = (
        "import sys\n"
        "def rss():\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024\n"
        "base = rss()\n"
        "if sys.argv[1] != '-': __import__(sys.argv[1])\n"
        "print(rss() - base)\n"
    )
    out: dict[str, float] = {}
    for package in packages:
        run = subprocess.run(
            [procs.python(), "-c", code, package],
            capture_output=True,
            text=True,
            cwd=procs.ROOT,
            check=False,
        )
        if run.returncode == 0:
            out[package] = round(float(run.stdout.strip()), 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def startup_rss(infra: Infra, workdir: Path, configs: list[str]) -> dict[str, Any]:
    """Memory of each configuration's worker, idle, a few seconds after it started."""
    out: dict[str, Any] = {}
    for name in configs:
        cfg = CONFIGS[name]
        env = _env(cfg, infra, workdir)
        worker = procs.Proc(cfg.worker(), env, workdir / f"worker-startup-{name}.log")
        try:
            time.sleep(6)
            if not worker.alive():
                raise RuntimeError(f"{name} worker exited:\n{worker.tail()}")
            tree = worker.tree()
            out[name] = {
                "largest_mb": round(max(procs.rss_mb(p) for p in tree), 1),
                "total_mb": round(sum(procs.rss_mb(p) for p in tree), 1),
                "pss_total_mb": round(sum(procs.pss_mb(p) for p in tree), 1),
                "processes": len(tree),
            }
        finally:
            worker.stop()
            _cleanup(env, infra)
    return out


def markdown(doc: dict[str, Any], top: int = 15) -> str:
    """The profiles as Markdown tables for docs/performance.md."""
    lines: list[str] = []
    for key, title, per in (
        ("drain", "Worker, drain", "worker_cpu_ms_per_task"),
        ("client", "Client, kiq() + wait_result(), 100 callers", "client_cpu_ms_per_task"),
    ):
        prof = doc.get(key)
        if not prof:
            continue
        us = prof[per] * 1000
        lines += [
            f"#### {title}: {prof['samples']:,} samples, {us:.0f} µs of CPU per task",
            "",
            "| function (inclusive) | share | µs per task |",
            "|---|---:|---:|",
            *(f"| `{k}` | {v:.1%} | {v * us:.0f} |" for k, v in prof["inclusive"][:top]),
            "",
            "| function (self) | share | µs per task |",
            "|---|---:|---:|",
            *(f"| `{k}` | {v:.1%} | {v * us:.0f} |" for k, v in prof["self"][:top]),
            "",
            "| package (self) | share | µs per task |",
            "|---|---:|---:|",
            *(f"| {k} | {v:.1%} | {v * us:.0f} |" for k, v in prof["packages_self"][:top]),
            "",
            "| kiqstack function (inclusive) | share | µs per task |",
            "|---|---:|---:|",
            *(f"| `{k}` | {v:.1%} | {v * us:.0f} |" for k, v in prof["kiqstack_inclusive"][:top]),
            "",
        ]
    imports = doc.get("imports")
    if imports:
        lines += [
            f"#### Worker imports: {imports['modules']} modules (supervisor and worker process of "
            "`python -m app worker`); worker process RSS "
            f"{imports['worker_process_rss_mb']} MB idle after startup (supervisor "
            f"{imports['supervisor_rss_mb']} MB); web framework modules loaded: "
            f"{', '.join(imports['web_framework_loaded']) or 'none'}",
            "",
            "| package | modules | import time (self), ms | RSS imported alone, MB |",
            "|---|---:|---:|---:|",
            *(
                f"| {p['package']} | {p['modules']} | {p['self_import_ms']} "
                f"| {imports['rss_alone_mb'].get(p['package'], '')} |"
                for p in imports["packages"][:20]
            ),
            "",
            "Who imports the heavy packages (first import, innermost first):",
            "",
            *(f"- {p}: {via}" for p, via in imports["imported_via"].items() if via),
            "",
        ]
    startup = doc.get("startup_rss")
    if startup:
        lines += [
            "#### Worker RSS idle after startup",
            "",
            "| configuration | processes | largest, MB | total, MB | PSS total, MB |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {CONFIGS[c].label} | {m['processes']} | {m['largest_mb']} | {m['total_mb']} "
                f"| {m['pss_total_mb']} |"
                for c, m in startup.items()
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile; write ``bench/results/profile.json`` and ``profile.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="tasks in the drain profile")
    parser.add_argument("--e2e-n", type=int, default=10_000, help="tasks in the client profile")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["drain", "client", "imports", "startup"],
        choices=["drain", "client", "imports", "startup"],
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "profile.json")
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {"load_average_at_start": procs.load_average()}
    with _infra(None, None) as infra:
        workdir = Path(tempfile.mkdtemp(prefix="kiqstack-profile-"))
        if "drain" in args.parts:
            doc["drain"] = profile_drain(infra, workdir, args.n, args.rate)
        if "client" in args.parts:
            doc["client"] = profile_client(infra, workdir, args.e2e_n, args.rate)
        if "imports" in args.parts:
            doc["imports"] = worker_imports(infra, workdir)
        if "startup" in args.parts:
            doc["startup_rss"] = startup_rss(
                infra, workdir, [c for c in CONFIGS if c != "kiqstack_2p"]
            )
    doc["load_average_at_end"] = procs.load_average()
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    args.out.with_suffix(".md").write_text(md + "\n")
    sys.stdout.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
