"""Settings: names, defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import pytest

from app.config import RunMode, Settings, load_settings
from app.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert s.nats_url == ["nats://localhost:4222"]
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.run_mode is RunMode.SERVER
    assert (s.host, s.port, s.metrics_port) == ("0.0.0.0", 8000, 9000)
    assert s.task_modules == ["app.tasks.example"]
    assert (s.ack_wait_seconds, s.max_deliver, s.result_ttl_seconds) == (300, 5, 86400)
    assert s.max_payload_bytes == 512 * 1024
    assert s.api_token is None
    assert (s.log_level, s.log_format) == ("INFO", "text")
    assert (s.nats_stream, s.nats_subject, s.nats_consumer) == (
        "kiqstack_tasks",
        "kiqstack.tasks",
        "kiqstack_workers",
    )
    assert s.consumer_max_deliver == 6  # one extra delivery moves it to the dead-letter stream


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("TASK_MODULES", "app.tasks.example,my.tasks")
    monkeypatch.setenv("RUN_MODE", "worker")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("API_TOKEN", "")
    s = load_settings()
    assert s.nats_url == ["nats://a:4222", "nats://b:4222"]
    assert s.task_modules == ["app.tasks.example", "my.tasks"]
    assert s.run_mode is RunMode.WORKER
    assert (s.log_level, s.log_format) == ("DEBUG", "json")
    assert s.api_token is None  # empty means unset: the API stays open


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RUN_MODE", "sideways", "RUN_MODE"),
        ("PORT", "0", "PORT"),
        ("METRICS_PORT", "x", "METRICS_PORT"),
        ("NATS_URL", "localhost:4222", "NATS_URL"),
        ("REDIS_URL", "http://r", "REDIS_URL"),
        ("TASK_MODULES", "app/tasks.py", "TASK_MODULES"),
        ("ACK_WAIT_SECONDS", "-1", "ACK_WAIT_SECONDS"),
        ("MAX_DELIVER", "0", "MAX_DELIVER"),
        ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY"),
        ("NATS_STREAM", "has.dot", "NATS_STREAM"),
        ("NATS_SUBJECT", "tasks.>", "NATS_SUBJECT"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
        ("MAX_PAYLOAD_BYTES", "10", "MAX_PAYLOAD_BYTES"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.detail.startswith("invalid configuration: ")
    assert fragment in info.value.detail


def test_streams_must_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_DEAD_LETTER_STREAM", "kiqstack_tasks")
    with pytest.raises(ConfigError, match="NATS_STREAM and NATS_DEAD_LETTER_STREAM must differ"):
        load_settings()
