"""Read kiqstack process logs in tests: is the log clean, which tasks started, JSON lines."""

from __future__ import annotations

import json
import re
from typing import Any

# The text format (app.logs.TEXT_FORMAT) starts every line with a timestamp: a line without one is
# the continuation of a traceback or something printed past logging.
_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# What a crash, a restarted worker process or a traceback leaves in a log.
CRASH_MARKERS = (
    "Traceback",
    "is dead",
    "Scheduling reload",
    "Exception Group",
    "worker process failed",
    "uncaught exception",
)
_STARTED = re.compile(r"task started id=(\S+)")


def json_records(text: str) -> list[dict[str, Any]]:
    """Every line of a ``LOG_FORMAT=json`` log as a dict; fails on a line that is not one."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), f"line {number} is not a JSON object: {line!r}"
        records.append(record)
    return records


def assert_clean_log(text: str, *, json_format: bool = False) -> None:
    """No crash, no process restart, no traceback, and one record per line.

    :param text: the log.
    :param json_format: the log was written with ``LOG_FORMAT=json``.
    """
    if json_format:
        records = json_records(text)
        flat = "\n".join(json.dumps(r) for r in records)
    else:
        stray = [line for line in text.splitlines() if line.strip() and not _TEXT_LINE.match(line)]
        assert not stray, "lines that are not log records:\n" + "\n".join(stray[:20])
        flat = text
    found = [marker for marker in CRASH_MARKERS if marker in flat]
    assert not found, f"log shows {found}:\n{text[-4000:]}"


def started_ids(text: str) -> list[str]:
    """Task ids of every "task started" line (text format), in order, repeats included."""
    return _STARTED.findall(text)
