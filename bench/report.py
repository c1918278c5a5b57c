"""Medians, ratios, targets and the Markdown table of a benchmark run (:mod:`bench.run`).

Every ratio is kiqstack / the other configuration: above 1 means kiqstack is faster for rates,
and slower or larger for latencies and memory. ``ratios`` divides the medians over the rounds;
``paired_ratios`` is the median of the per-round ratios (both runs of a pair ran minutes apart).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.configs import CONFIGS

BASE = "kiqstack"
# Short names in the flat ratio keys (``e2e_vs_stock`` is the historical key of stock taskiq-nats).
ALIASES = {"stock_nats": "stock"}
CELERY = ("celery_prefork", "celery_threads", "celery_threads_c16")

Getter = Callable[[dict[str, Any]], float | None]


def _get(node: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _memory(field: str) -> Getter:
    def get(results: dict[str, Any]) -> float | None:
        found = [
            _get(results, scenario, "worker_memory", field)
            for scenario in ("e2e", "latency", "drain")
        ]
        values = [v for v in found if v]
        return max(values) if values else None

    return get


def _field(*path: str) -> Getter:
    return lambda results: _get(results, *path)


# metric name -> (how to read it from one configuration's results of one round, higher is better)
METRICS: dict[str, tuple[Getter, bool]] = {
    "e2e": (_field("e2e", "tasks_per_s"), True),
    "drain": (_field("drain", "tasks_per_s"), True),
    "p50": (_field("latency", "p50"), False),
    "p99": (_field("latency", "p99"), False),
    "rss": (_memory("largest_mb"), False),
    "rss_total": (_memory("total_mb"), False),
    "e2e_client_cpu_ms": (_field("e2e", "cpu_ms_per_task", "client"), False),
    "e2e_worker_cpu_ms": (_field("e2e", "cpu_ms_per_task", "worker"), False),
    "e2e_nats_cpu_ms": (_field("e2e", "cpu_ms_per_task", "nats-server"), False),
    "e2e_redis_cpu_ms": (_field("e2e", "cpu_ms_per_task", "redis-server"), False),
    "drain_worker_cpu_ms": (_field("drain", "cpu_ms_per_task", "worker"), False),
    "drain_enqueue_cpu_ms": (_field("drain", "cpu_ms_per_task", "enqueue_client"), False),
    "drain_nats_cpu_ms": (_field("drain", "cpu_ms_per_task", "nats-server"), False),
    "drain_redis_cpu_ms": (_field("drain", "cpu_ms_per_task", "redis-server"), False),
    "e2e_other_cores": (_field("e2e", "other_cores"), False),
    "drain_other_cores": (_field("drain", "other_cores"), False),
}
RATIO_METRICS = ("e2e", "drain", "p50", "p99", "rss", "rss_total")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def per_round(rounds: list[dict[str, Any]], config: str, metric: str) -> list[float | None]:
    """One metric of one configuration, round by round."""
    get = METRICS[metric][0]
    return [get(_get(r, "results", config) or {}) for r in rounds]


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The run whose ``key`` is the median (all figures of one run stay together)."""
    present = [r for r in runs if r and r.get(key) is not None]
    if not present:
        return None
    ordered = sorted(present, key=lambda r: r[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [r[key] for r in present]
    return chosen


def _legacy(configs: list[str], rounds: list[dict[str, Any]], params: dict[str, Any]) -> Any:
    """``configurations``: per configuration the median run of each scenario (earlier layout)."""
    out: dict[str, Any] = {}
    for c in configs:
        runs = [_get(r, "results", c) or {} for r in rounds]
        entry: dict[str, Any] = {}
        for scenario, key, n in (
            ("e2e", "tasks_per_s", params["e2e_n"]),
            ("drain", "tasks_per_s", params["drain_n"]),
            ("bulk", "tasks_per_s", params["e2e_n"]),
            ("latency", "p50", None),
        ):
            chosen = _median_run([r.get(scenario) for r in runs], key)
            if chosen is not None:
                entry[scenario] = chosen if n is None else {str(n): chosen}
        if c == BASE:
            http = _median_run([r.get("http") for r in rounds], "rps")
            if http is not None:
                entry["http"] = http
        out[c] = entry
    return out


def _scale(configs: list[str], rounds: list[dict[str, Any]], params: dict[str, Any]) -> Any:
    sizes = [str(n) for n in params.get("scale_n", [])]
    drain: dict[str, Any] = {}
    for n in sizes:
        runs = [_get(r, "scale", n) for r in rounds]
        drain[n] = {
            "tasks_per_s": _median([_get(x, "tasks_per_s") for x in runs]),
            "worker_cpu_ms_per_task": _median([_get(x, "cpu_ms_per_task", "worker") for x in runs]),
            "nats_cpu_ms_per_task": _median(
                [_get(x, "cpu_ms_per_task", "nats-server") for x in runs]
            ),
            "other_cores": _median([_get(x, "other_cores") for x in runs]),
            "enqueue_per_s": _median([_get(x, "enqueue_per_s") for x in runs]),
            "runs": [_get(x, "tasks_per_s") for x in runs],
        }
    flat = None
    if "10000" in drain and "100000" in drain:
        paired = [
            _ratio(
                _get(r, "scale", "100000", "tasks_per_s"),
                _get(r, "scale", "10000", "tasks_per_s"),
            )
            for r in rounds
        ]
        flat = {
            "ratio": _ratio(drain["100000"]["tasks_per_s"], drain["10000"]["tasks_per_s"]),
            "paired": _median(list(paired)),
            "per_round": paired,
        }
    processes: dict[str, Any] = {}
    if "kiqstack_2p" in configs:
        for metric in ("e2e", "drain"):
            one = _median(per_round(rounds, BASE, metric))
            two = _median(per_round(rounds, "kiqstack_2p", metric))
            processes[metric] = {"1": one, "2": two, "speedup": _ratio(two, one)}
    return {"drain": drain, "drain_100k_vs_10k": flat, "processes": processes}


def build(configs: list[str], rounds: list[dict[str, Any]], params: dict[str, Any]) -> Any:
    """Medians, ratios, scale figures and targets of the rounds."""
    medians = {c: {m: _median(per_round(rounds, c, m)) for m in METRICS} for c in configs}
    ratios: dict[str, float | None] = {}
    paired: dict[str, float | None] = {}
    per_round_ratios: dict[str, list[float | None]] = {}
    if BASE in configs:
        for c in configs:
            if c == BASE:
                continue
            name = ALIASES.get(c, c)
            for m in RATIO_METRICS:
                key = f"{m}_vs_{name}"
                ratios[key] = _ratio(medians[BASE][m], medians[c][m])
                mine, theirs = per_round(rounds, BASE, m), per_round(rounds, c, m)
                pairs = [_ratio(a, b) for a, b in zip(mine, theirs, strict=True)]
                per_round_ratios[key] = pairs
                paired[key] = _median(list(pairs))
    scale = _scale(configs, rounds, params)
    base = medians.get(BASE, {})
    http = _get(_legacy(configs, rounds, params), BASE, "http") or {}

    def target(value: float | None, goal: float, *, at_most: bool = False) -> dict[str, Any]:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        return {"value": value, "goal": f"{'<=' if at_most else '>='} {goal}", "met": met}

    def worst(metric: str, peers: tuple[str, ...]) -> float | None:
        found = [ratios.get(f"{metric}_vs_{p}") for p in peers if p in configs]
        values = [v for v in found if v is not None]
        return min(values) if values else None

    targets = {
        # issue 15
        "e2e_vs_dramatiq": target(ratios.get("e2e_vs_dramatiq"), 2.0),
        "drain_vs_dramatiq": target(ratios.get("drain_vs_dramatiq"), 2.0),
        "e2e_vs_best_celery": target(worst("e2e", CELERY), 3.0),
        "drain_vs_best_celery": target(worst("drain", CELERY), 3.0),
        "latency_p50_ms": target(base.get("p50"), 2.0, at_most=True),
        "latency_p99_ms": target(base.get("p99"), 10.0, at_most=True),
        "worker_rss_vs_dramatiq": target(ratios.get("rss_vs_dramatiq"), 1.0, at_most=True),
        "drain_100k_vs_10k": target(_get(scale, "drain_100k_vs_10k", "ratio"), 0.9),
        # earlier targets
        "e2e_vs_stock": target(ratios.get("e2e_vs_stock"), 2.0),
        "drain_vs_stock": target(ratios.get("drain_vs_stock"), 1.5),
        "http_dispatch_rps": target(http.get("rps"), 2000.0),
    }
    return {
        "medians": medians,
        "ratios": ratios,
        "paired_ratios": paired,
        "ratios_per_round": per_round_ratios,
        "scale": scale,
        "latency_ms": {"p50": base.get("p50"), "p99": base.get("p99")},
        "worker_rss_mb": base.get("rss"),
        "http_dispatch_rps": http.get("rps"),
        "targets": targets,
        "configurations": _legacy(configs, rounds, params),
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _x(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def table(doc: dict[str, Any]) -> str:
    """The results as Markdown (also printed by ``python -m bench``)."""
    params, medians, ratios = doc["parameters"], doc["medians"], doc["ratios"]
    rows = [
        f"| configuration | end to end, {params['e2e_window']} callers, tasks/s "
        f"| drain of {params['drain_n']:,}, tasks/s "
        f"| latency at {params['latency_rate_per_s']:g}/s, p50 / p99 ms "
        "| worker peak RSS, largest / total MB | CPU ms per task e2e, client / worker "
        "| kiqstack / this: e2e, drain | other processes, cores: e2e, drain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, m in medians.items():
        label = CONFIGS[c].label + (" (tuned)" if CONFIGS[c].tuned else "")
        name = ALIASES.get(c, c)
        vs = (
            ""
            if c == "kiqstack"
            else f"{_x(ratios.get(f'e2e_vs_{name}'))}, {_x(ratios.get(f'drain_vs_{name}'))}"
        )
        rows.append(
            f"| {label} | {_fmt(m['e2e'])} | {_fmt(m['drain'])} "
            f"| {_fmt(m['p50'], 1)} / {_fmt(m['p99'], 1)} "
            f"| {_fmt(m['rss'], 1)} / {_fmt(m['rss_total'], 1)} "
            f"| {_fmt(m['e2e_client_cpu_ms'], 2)} / {_fmt(m['e2e_worker_cpu_ms'], 2)} | {vs} "
            f"| {_fmt(m['e2e_other_cores'], 2)}, {_fmt(m['drain_other_cores'], 2)} |"
        )
    lines = rows
    scale = doc["scale"]
    if scale["drain"]:
        lines += [
            "",
            "| kiqstack drain of N queued | tasks/s | CPU ms per task, worker / nats-server "
            "| enqueue tasks/s | other processes, cores |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n, s in scale["drain"].items():
            lines.append(
                f"| {int(n):,} | {_fmt(s['tasks_per_s'])} "
                f"| {_fmt(s['worker_cpu_ms_per_task'], 3)} / {_fmt(s['nats_cpu_ms_per_task'], 3)} "
                f"| {_fmt(s['enqueue_per_s'])} | {_fmt(s['other_cores'], 2)} |"
            )
        flat = scale.get("drain_100k_vs_10k")
        if flat:
            lines.append(
                f"\nrate at 100k / rate at 10k: {_x(flat['ratio'])} "
                f"(paired per round: {_x(flat['paired'])})"
            )
    if scale.get("processes"):
        p = scale["processes"]
        parts = [
            f"{k}: {_fmt(v['1'])} → {_fmt(v['2'])} tasks/s (x{_x(v['speedup'])})"
            for k, v in p.items()
        ]
        lines.append("1 → 2 worker processes (kiqstack): " + "; ".join(parts))
    http = _get(doc, "configurations", "kiqstack", "http")
    if http:
        lines.append(
            f"\nHTTP dispatch (`POST /tasks/{{name}}`, one uvicorn process, {http['connections']} "
            f"connections, {http['tool']}): **{http['rps']:,.0f} requests/s**, "
            f"p50 {_fmt(http['latency_ms']['p50'], 1)} ms, "
            f"p99 {_fmt(http['latency_ms']['p99'], 1)} ms; server peak RSS "
            f"{http['server_rss_mb']:.1f} MB."
        )
    loads = "; ".join(
        f"round {r['round']}: {r['load_before']} → {r['load_after']}" for r in doc["rounds"]
    )
    lines.append(f"\nLoad average (1/5/15 min) before → after each round: {loads}.")
    return "\n".join(lines)
