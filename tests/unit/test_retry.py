"""The retry backoff and the log-safe URL."""

from __future__ import annotations

import pytest

from app.retry import Backoff, describe_error, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://localhost:4222", "nats://localhost:4222"),
        ("nats://user:s3cret@nats:4222", "nats://user:***@nats:4222"),
        ("tls://t0ken@nats:4222", "tls://***@nats:4222"),
        ("nats://user:p@ss@nats:4222", "nats://user:***@nats:4222"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=5.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_describe_error_is_one_line() -> None:
    assert describe_error(OSError("a\n  b")) == "OSError: a b"
    assert describe_error(TimeoutError()) == "TimeoutError"
