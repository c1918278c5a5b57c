"""Fixtures of the chart tests: a temp copy of chart/ with stand-in subcharts (see chartlib)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chartlib import CHART_DIR, STANDINS, Rendered, render, write_standin


@pytest.fixture(scope="session")
def chart_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of chart/ with stand-in nats and valkey charts under charts/."""
    base = tmp_path_factory.mktemp("chart")
    dest = base / "kiqstack"
    shutil.copytree(CHART_DIR, dest, ignore=shutil.ignore_patterns("charts", "*.tgz"))
    for name, spec in STANDINS.items():
        write_standin(dest / "charts", name, spec)
    yield dest
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def chart(chart_path: Path) -> Path:
    """The chart directory to render (chartlib.render loads it afresh each time)."""
    return chart_path


@pytest.fixture(scope="session")
def defaults(chart: Path) -> Rendered:
    return render(chart)
