"""The benchmark's arithmetic: medians over rounds, kiqstack / peer ratios, targets, the table.

Synthetic round records, no servers and no timing: the harness itself runs in ``make bench-smoke``.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import client, report
from bench.configs import CONFIGS
from bench.run import _rotated


def _results(e2e: float, drain: float, p50: float, rss: float) -> dict[str, Any]:
    memory = {"largest_mb": rss, "total_mb": 2 * rss}
    return {
        "e2e": {"tasks_per_s": e2e, "cpu_ms_per_task": {"client": 0.5, "worker": 0.4}},
        "latency": {"p50": p50, "p99": 4 * p50, "worker_memory": memory},
        "drain": {"tasks_per_s": drain, "worker_memory": memory},
    }


ROUNDS: list[dict[str, Any]] = [
    {
        "round": i + 1,
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [1.5, 1.0, 1.0],
        "results": {
            "kiqstack": _results(e2e, 2000.0, 2.0, 40.0),
            "dramatiq": _results(1000.0, 1000.0 * (i + 1), 8.0, 30.0),
        },
        "scale": {"10000": {"tasks_per_s": 2000.0}, "100000": {"tasks_per_s": 1900.0 - i}},
    }
    for i, e2e in enumerate([3000.0, 1000.0, 2000.0])
]
PARAMS = {"e2e_n": 5000, "drain_n": 20000, "scale_n": [10000, 100000]}


def test_medians_and_ratios() -> None:
    out = report.build(["kiqstack", "dramatiq"], ROUNDS, PARAMS)
    assert out["medians"]["kiqstack"]["e2e"] == 2000.0
    assert out["medians"]["dramatiq"]["drain"] == 2000.0
    assert out["ratios"]["e2e_vs_dramatiq"] == 2.0
    assert out["ratios"]["drain_vs_dramatiq"] == 1.0
    assert out["ratios"]["p50_vs_dramatiq"] == 0.25
    assert out["ratios"]["rss_vs_dramatiq"] == pytest.approx(1.333, abs=1e-3)
    # Paired: the median of the per-round ratios (2000/1000, 2000/2000, 2000/3000).
    assert out["ratios_per_round"]["drain_vs_dramatiq"] == [2.0, 1.0, 0.667]
    assert out["paired_ratios"]["drain_vs_dramatiq"] == 1.0


def test_targets_and_scale() -> None:
    out = report.build(["kiqstack", "dramatiq"], ROUNDS, PARAMS)
    targets = out["targets"]
    assert targets["e2e_vs_dramatiq"]["met"] is True
    assert targets["drain_vs_dramatiq"]["met"] is False
    assert targets["worker_rss_vs_dramatiq"]["met"] is False
    assert targets["latency_p50_ms"]["met"] is True
    assert targets["e2e_vs_best_celery"]["value"] is None  # not measured: unknown, not met
    assert out["scale"]["drain_100k_vs_10k"]["ratio"] == pytest.approx(0.95, abs=1e-3)
    assert targets["drain_100k_vs_10k"]["met"] is True


def test_table_names_every_configuration_and_round() -> None:
    configs = ["kiqstack", "dramatiq"]
    doc: dict[str, Any] = {
        "parameters": {"e2e_window": 100, "drain_n": 20000, "latency_rate_per_s": 200.0, **PARAMS},
        "rounds": ROUNDS,
        **report.build(configs, ROUNDS, PARAMS),
    }
    text = report.table(doc)
    assert "| kiqstack |" in text
    assert "| Dramatiq |" in text
    assert "round 3: [1.0, 1.0, 1.0] → [1.5, 1.0, 1.0]" in text


def test_rounds_rotate_the_order() -> None:
    configs = ["a", "b", "c"]
    assert [_rotated(configs, i)[0] for i in range(4)] == ["a", "b", "c", "a"]


def test_every_configuration_has_a_client() -> None:
    for config in CONFIGS.values():
        assert config.client in client.CONFIGS
        assert set(config.scenarios) <= {"e2e", "latency", "drain", "scale", "http", "bulk"}
