"""The retry backoff and the one-line error description."""

from __future__ import annotations

from app.retry import Backoff, describe_error


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=5.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_describe_error_is_one_line() -> None:
    assert describe_error(OSError("a\n  b")) == "OSError: a b"
    assert describe_error(TimeoutError()) == "TimeoutError"
