"""Fixtures of the chart tests: a temp copy of chart/ with stand-in subcharts (see chartlib)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.chartlib import Rendered, copy_chart, render
from tests.chart.scenarios import SCENARIOS


@pytest.fixture(scope="session")
def chart_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of chart/ with stand-in nats and valkey charts under charts/."""
    base = tmp_path_factory.mktemp("chart")
    yield copy_chart(base / "kiqstack")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def chart(chart_path: Path) -> Path:
    """The chart directory to render (chartlib.render loads it afresh each time)."""
    return chart_path


@pytest.fixture(scope="session")
def defaults(chart: Path) -> Rendered:
    return render(chart)


@pytest.fixture(scope="session")
def rendered(chart: Path) -> dict[str, Rendered]:
    """Every scenario of scenarios.SCENARIOS, rendered once."""
    return {
        name: render(chart, values, name=release, api_versions=apis)
        for name, (values, release, apis) in SCENARIOS.items()
    }
