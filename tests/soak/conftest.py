"""The soak layer: real processes left running for minutes, not seconds (marker ``soak``).

``make test`` runs it with the default ``SOAK_SECONDS`` (75: at least the 60 s of idling a worker
needs to show what a short test never sees); ``make soak-long`` runs the same tests for an hour
(``SOAK_SECONDS=3600``) before a release. Every test here is marked ``soak`` and given a timeout
that grows with ``SOAK_SECONDS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_SOAK_SECONDS = 75
MIN_SOAK_SECONDS = 60
# Time a soak test may take on top of SOAK_SECONDS (starting processes, long tasks, stopping).
SOAK_MARGIN_SECONDS = 300


def soak_duration() -> float:
    """How long the soak tests idle, from ``SOAK_SECONDS`` (at least 60 s).

    :raises pytest.UsageError: on a value that is not a number.
    """
    raw = os.environ.get("SOAK_SECONDS", "").strip()
    if not raw:
        return float(DEFAULT_SOAK_SECONDS)
    try:
        return max(float(raw), float(MIN_SOAK_SECONDS))
    except ValueError:
        raise pytest.UsageError(f"SOAK_SECONDS must be a number of seconds, not {raw!r}") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/soak ``soak``, with a timeout sized by ``SOAK_SECONDS``."""
    here = Path(__file__).parent
    timeout = soak_duration() + SOAK_MARGIN_SECONDS
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.soak)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(timeout))


@pytest.fixture(scope="session")
def soak_seconds() -> float:
    """How long a soak test leaves its processes idle (``SOAK_SECONDS``, default 75, min 60)."""
    return soak_duration()
