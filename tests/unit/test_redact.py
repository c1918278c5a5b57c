"""Credentials never reach a message: URLs lose their user-info, password= values are masked."""

from __future__ import annotations

import io
import logging

import pytest

from app.redact import RedactingStreamHandler, redact, redact_url


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:hunter2@redis:6379/0", "redis://***@redis:6379/0"),
        ("nats://kiq:hunter2@nats:4222", "nats://***@nats:4222"),
        ("nats://s3cr3t-token@nats:4222", "nats://***@nats:4222"),
        ("connect to 'rediss://u:p@r:6380' failed", "connect to 'rediss://***@r:6380' failed"),
        ("a nats://a:1@n1, b nats://b:2@n2", "a nats://***@n1, b nats://***@n2"),
        ("redis://r:6379/0?password=hunter2&db=1", "redis://r:6379/0?password=***&db=1"),
        ("mail me at someone@example.org", "mail me at someone@example.org"),
        ("nats://nats:4222", "nats://nats:4222"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("user:pw@host:4222", "***@host:4222"),
        ("redis://a@b:c@host:1", "redis://***@host:1"),
        ("redis://host:1/0", "redis://host:1/0"),
    ],
)
def test_redact_url_even_malformed(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_log_lines_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = RedactingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("tests.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("cannot reach %s", "redis://:hunter2@redis:6379/0")
        try:
            raise ConnectionError("nats://kiq:hunter2@nats:4222 refused")
        except ConnectionError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "redis://***@redis:6379/0" in text
    assert "Traceback" in text
    assert "nats://***@nats:4222 refused" in text
