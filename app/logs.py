"""Logging setup: plain text or one JSON object per line (``LOG_FORMAT``).

Everything a kiqstack process reports goes through :mod:`logging`, so that with
``LOG_FORMAT=json`` every line is one JSON object: warnings, uncaught exceptions (of the main
thread, other threads and finalizers) and tracebacks (an ``exception`` field, not extra lines).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from types import TracebackType
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
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
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
    route_uncaught_errors()
    # taskiq's receiver logs every execution at INFO; kiqstack logs its own start/finish lines.
    logging.getLogger("taskiq.receiver.receiver").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )


_uncaught = logging.getLogger("kiqstack.uncaught")


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    _uncaught.critical("uncaught exception: %s", value, exc_info=(kind, value, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    _uncaught.error(
        "uncaught exception in thread %s: %s",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    info = (type(exc), exc, unraisable.exc_traceback) if exc is not None else None
    _uncaught.warning(
        "%s: %r", unraisable.err_msg or "exception ignored in", unraisable.object, exc_info=info
    )


def route_uncaught_errors() -> None:
    """Send warnings and uncaught exceptions to :mod:`logging` instead of raw stderr."""
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught
    sys.unraisablehook = _log_unraisable
