"""Retrying what fails for a while (NATS down, a stream being recreated), and saying so safely.

A capped exponential :class:`Backoff` spaces the attempts out; :func:`describe_error` turns what
went wrong into one log line without a traceback (credentials are masked by :mod:`app.redact`).
"""

from __future__ import annotations

# Waits between attempts to reach NATS (or to recreate its streams): doubling, capped.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0


def describe_error(exc: BaseException) -> str:
    """``Type: message`` on one line (for log lines that must not carry a traceback)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Backoff:
    """Capped exponential waits: ``first``, doubling up to ``cap``; :meth:`reset` starts over."""

    def __init__(self, first: float = RETRY_FIRST_SECONDS, cap: float = RETRY_MAX_SECONDS) -> None:
        """Create a backoff.

        :param first: the first wait, in seconds.
        :param cap: the longest wait, in seconds.
        """
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        """Return the next wait, in seconds."""
        wait = min(self.cap, self.first * float(2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return wait

    def reset(self) -> None:
        """Start over from ``first``."""
        self.attempt = 0
