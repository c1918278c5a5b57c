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


# -- secrets ------------------------------------------------------------------------------------
def test_repr_shows_no_secret() -> None:
    s = load_settings(
        api_token="tok-3f9a",  # noqa: S106 - a test value
        nats_url="nats://kiq:nats-pw-1@nats:4222",
        redis_url="redis://:redis-pw-2@redis:6379/0",
    )
    shown = f"{s!r} {s} {s.model_dump()!r}"
    for secret in ("tok-3f9a", "nats-pw-1", "redis-pw-2"):
        assert secret not in shown
    assert s.api_token_value == "tok-3f9a"  # noqa: S105
    assert s.nats_url == ["nats://kiq:nats-pw-1@nats:4222"]  # the clients still get the URL


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("REDIS_URL", "http://user:hunter2@redis:6379/0", "hunter2"),
        ("REDIS_URL", "user:hunter2@redis:6379", "hunter2"),
        ("NATS_URL", "kiq:hunter2@nats:4222", "hunter2"),
        ("NATS_URL", "nats://ok:4222,http://kiq:hunter2@nats:4222", "hunter2"),
    ],
)
def test_config_errors_never_echo_a_password(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, secret: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in info.value.detail
    assert secret not in info.value.detail
    assert "***@" in info.value.detail


def test_secrets_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    files = {
        "API_TOKEN_FILE": ("tok-from-file\n", "api_token_value", "tok-from-file"),
        "NATS_URL_FILE": ("nats://a:1@n1:4222,nats://a:1@n2:4222\n", "nats_url", None),
        "REDIS_URL_FILE": ("redis://:pw@r:6379/1", "redis_url", "redis://:pw@r:6379/1"),
    }
    for variable, (content, _, _) in files.items():
        path = tmp_path / variable.lower()
        path.write_text(content)
        monkeypatch.setenv(variable, str(path))
    s = load_settings()
    assert s.api_token_value == "tok-from-file"  # noqa: S105 - the final newline is dropped
    assert s.nats_url == ["nats://a:1@n1:4222", "nats://a:1@n2:4222"]
    assert s.redis_url == "redis://:pw@r:6379/1"


@pytest.mark.parametrize("name", ["API_TOKEN", "NATS_URL", "REDIS_URL"])
def test_secret_and_its_file_together_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path, name: str
) -> None:
    path = tmp_path / "secret"
    path.write_text("redis://r:6379/0" if name == "REDIS_URL" else "nats://n:4222")
    monkeypatch.setenv(name, "redis://r:6379/0" if name == "REDIS_URL" else "nats://n:4222")
    monkeypatch.setenv(f"{name}_FILE", str(path))
    with pytest.raises(ConfigError, match=f"{name} and {name}_FILE are both set"):
        load_settings()


def test_empty_secret_does_not_count_as_set(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("t")
    monkeypatch.setenv("API_TOKEN", "")
    monkeypatch.setenv("API_TOKEN_FILE", str(path))
    assert load_settings().api_token_value == "t"  # noqa: S105


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "API_TOKEN_FILE: no such file: "), ("  \n", "API_TOKEN_FILE: ")],
)
def test_missing_or_empty_secret_file_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path, content: str | None, fragment: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("API_TOKEN_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert fragment in info.value.detail
    assert str(path) in info.value.detail
    if content is not None:
        assert "is empty" in info.value.detail  # never an open API by accident


def test_cli_prints_config_errors_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    monkeypatch.setenv("REDIS_URL", "http://default:hunter2@redis:6379/0")
    assert main(["server"]) == 2
    err = capsys.readouterr().err
    assert "REDIS_URL" in err
    assert "hunter2" not in err


# -- ports --------------------------------------------------------------------------------------
def test_server_metrics_port_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().server_metrics_port == 9000  # the worker's variable, its own process
    monkeypatch.setenv("RUN_MODE", "both")
    assert load_settings().server_metrics_port == 9001  # the worker keeps 9000 in the container
    monkeypatch.setenv("PORT", "9001")
    with pytest.raises(ConfigError, match=r"PORT must differ from METRICS_PORT \+ 1"):
        load_settings()


def test_api_and_metrics_ports_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "8000")
    with pytest.raises(ConfigError, match="PORT and METRICS_PORT must differ"):
        load_settings()


def test_http_edge_defaults() -> None:
    s = load_settings()
    assert (s.http_header_timeout_seconds, s.http_body_timeout_seconds) == (10, 30)
    assert s.http_keepalive_timeout_seconds == 5
    assert (s.http_limit_concurrency, s.http_max_connections) == (1000, 2000)
    assert (s.http_max_header_bytes, s.http_max_headers, s.http_backlog) == (32768, 100, 2048)
    assert s.idempotency_ttl_seconds == 86400
