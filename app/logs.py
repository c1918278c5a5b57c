"""Logging setup: plain text or one JSON object per line (``LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from app.config import Settings
from app.redact import RedactingStreamHandler

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line; ``extra=`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record.

        :param record: the log record.
        :return: a JSON line.
        """
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s"


class TextFormatter(logging.Formatter):
    """The text format, with the timestamp's date and time rendered once per second."""

    def __init__(self) -> None:
        """Create the formatter."""
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``YYYY-MM-DD HH:MM:SS,mmm`` in local time, like the standard formatter."""
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
        return f"{self._stamp},{int(record.msecs):03d}"


def configure_logging(settings: Settings) -> None:
    """Send logs to stderr at ``LOG_LEVEL`` in ``LOG_FORMAT``.

    :param settings: kiqstack settings.
    """
    handler = RedactingStreamHandler(sys.stderr)  # no credentials in any log line
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    # Skip what no kiqstack log line shows (caller lookup walks the stack on every record): the
    # logging docs' "Optimization" switches. Task start/finish lines are on the hot path.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):
        logging.logAsyncioTasks = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # taskiq's receiver logs every execution at INFO; kiqstack logs its own start/finish lines.
    logging.getLogger("taskiq.receiver.receiver").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )
