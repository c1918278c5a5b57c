"""The one place kiqstack reads its configuration from: environment variables.

Every field maps to the upper-case environment variable of the same name (``nats_url`` is
``NATS_URL``). The chart, the image, the e2e suite and the benchmarks rely on these names; they are
listed, with their defaults, in the README's settings table and in ``docs/contract.md``.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigError
from app.queues import DEFAULT_QUEUE, check_queue, queue_subject
from app.redact import redact, redact_url


class RunMode(enum.StrEnum):
    """The role a kiqstack process plays."""

    SERVER = "server"
    WORKER = "worker"
    BOTH = "both"
    SCHEDULER = "scheduler"


_NATS_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: Secret settings that can also be read from a file: ``<NAME>_FILE`` names the file.
SECRET_FILE_SETTINGS = {
    "api_token": "api_token_file",
    "nats_url": "nats_url_file",
    "redis_url": "redis_url_file",
}


def _unset(value: Any) -> bool:
    return value is None or value == ""


def _read_secret_file(variable: str, path: Any) -> str:
    """Read a mounted secret (surrounding whitespace, such as a final newline, is dropped).

    :raises ValueError: naming the variable when the file is missing, unreadable or empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{variable}: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"{variable}: cannot read {path}: {reason}") from None
    if not text:
        raise ValueError(f"{variable}: {path} is empty")
    return text


class Settings(BaseSettings):
    """kiqstack settings, read from the environment (no prefix)."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    # -- connections ---------------------------------------------------------------------------
    # URLs may carry credentials: kept out of repr(), redacted in every message (app.redact).
    nats_url: Annotated[list[str], NoDecode] = Field(
        default=["nats://localhost:4222"],
        description="NATS server URL; a comma-separated list for a cluster.",
        repr=False,
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0", description="Redis URL for task results.", repr=False
    )
    nats_url_file: Path | None = Field(
        default=None, description="File holding NATS_URL (a mounted Secret); excludes NATS_URL."
    )
    redis_url_file: Path | None = Field(
        default=None, description="File holding REDIS_URL (a mounted Secret); excludes REDIS_URL."
    )

    nats_connect_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="How long broker.startup() (the API server, your own scripts) waits for NATS "
        "before it fails with an error naming NATS_URL; a worker keeps retrying until stopped.",
    )

    # -- process role and ports ----------------------------------------------------------------
    run_mode: RunMode = Field(
        default=RunMode.SERVER,
        description="server, worker, both (server and worker; the server process also runs "
        "the scheduler) or scheduler.",
    )
    host: str = Field(default="0.0.0.0", description="Address the API and metrics servers bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="API port.")
    metrics_port: int = Field(
        default=9000,
        ge=1,
        le=65535,
        description="Port of /metrics, /livez and /readyz, for the server and the worker "
        "(RUN_MODE=both: the worker's; the server's is METRICS_PORT + 1).",
    )

    # -- tasks and delivery --------------------------------------------------------------------
    task_modules: Annotated[list[str], NoDecode] = Field(
        default=["app.tasks.example"],
        description="Comma-separated modules the worker imports to register tasks.",
    )
    ack_wait_seconds: float = Field(
        default=300,
        gt=0,
        description="How long a worker may go silent before JetStream redelivers its tasks; "
        "running tasks are kept alive every ACK_WAIT_SECONDS / 3.",
    )
    max_deliver: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Deliveries of one message before it is moved to the dead-letter stream.",
    )
    redelivery_delay_seconds: float = Field(
        default=5,
        ge=0,
        description="Base delay before a message a worker gave back is delivered again; "
        "it doubles with each delivery, capped at ACK_WAIT_SECONDS.",
    )
    worker_concurrency: int = Field(
        default=16, ge=1, le=10_000, description="Tasks one worker process runs at once."
    )
    worker_queues: Annotated[list[str], NoDecode] = Field(
        default=[DEFAULT_QUEUE],
        description="Comma-separated queues this worker serves, each with its own pull requests "
        "and WORKER_CONCURRENCY slots (a full queue never holds up another).",
    )
    worker_processes: int = Field(
        default=1, ge=1, le=64, description="Worker processes per container."
    )
    worker_shutdown_timeout: float = Field(
        default=30,
        ge=0,
        description="Seconds running tasks get to finish after SIGTERM; what is left is "
        "redelivered.",
    )
    worker_fetch_batch: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Most messages a worker fetches in one request (never more than its free "
        "capacity).",
    )

    # -- delayed and periodic tasks ------------------------------------------------------------
    max_schedule_delay_seconds: int = Field(
        default=366 * 86_400,
        ge=1,
        description="Longest delay (or farthest ETA) a task may be dispatched with.",
    )
    scheduler_interval_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="How often the scheduler checks that the periodic schedules are in NATS "
        "(and re-creates a missing one).",
    )

    # -- results -------------------------------------------------------------------------------
    result_ttl_seconds: int = Field(
        default=86_400, ge=1, description="Seconds a task result is kept in Redis."
    )
    result_key_prefix: str = Field(
        default="kiqstack:result", min_length=1, description="Prefix of result keys in Redis."
    )

    # -- API -----------------------------------------------------------------------------------
    max_payload_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body / task message accepted.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required on the task endpoints; unset leaves them open.",
    )
    api_token_file: Path | None = Field(
        default=None, description="File holding API_TOKEN (a mounted Secret); excludes API_TOKEN."
    )
    idempotency_ttl_seconds: int = Field(
        default=86_400,
        ge=300,
        le=30 * 86_400,
        description="How long an Idempotency-Key is remembered after its dispatch.",
    )

    # -- HTTP edge (uvicorn) ---------------------------------------------------------------------
    http_header_timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=300,
        description="Time a client has to send a request's headers, from connecting (or from "
        "the first byte of a keep-alive request); then 408 and the connection is closed.",
    )
    http_body_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        description="Time a client has to send a request's body once its headers are in; "
        "then the connection is closed.",
    )
    http_keepalive_timeout_seconds: int = Field(
        default=5, ge=1, le=3600, description="Idle time before a keep-alive connection is closed."
    )
    http_limit_concurrency: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Open connections or running requests above which a new request gets 503.",
    )
    http_max_connections: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="Open connections on the API port; one more is answered 503 and closed at "
        "once (lowered at startup to leave file descriptors free).",
    )
    http_max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers; larger gets 431 and the connection closes.",
    )
    http_max_headers: int = Field(
        default=100, ge=8, le=1000, description="Most header fields in one request (else 431)."
    )
    http_backlog: int = Field(
        default=2048,
        ge=16,
        le=65535,
        description="Listen backlog of the API socket (the kernel caps it at net.core.somaxconn).",
    )
    shutdown_delay_seconds: float = Field(
        default=5,
        ge=0,
        le=300,
        description="After SIGTERM the server answers /readyz with 503 this long before it closes.",
    )

    # -- logging -------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # -- JetStream names -----------------------------------------------------------------------
    nats_stream: str = Field(default="kiqstack_tasks", description="Work-queue stream name.")
    nats_subject: str = Field(default="kiqstack.tasks", description="Subject tasks go to.")
    nats_schedule_subject: str = Field(
        default="kiqstack.schedules",
        description="Prefix of the subjects holding schedule definitions in the task stream "
        "(delayed tasks, retries, periodic schedules: <prefix>.delayed.<id>, ...).",
    )
    nats_consumer: str = Field(
        default="kiqstack_workers", description="Durable pull consumer shared by all workers."
    )
    nats_dead_letter_stream: str = Field(
        default="kiqstack_dead_letter", description="Stream holding dead-lettered messages."
    )
    nats_dead_letter_subject: str = Field(
        default="kiqstack.dead_letter", description="Subject of dead-lettered messages."
    )
    nats_stream_replicas: int = Field(
        default=1, ge=1, le=5, description="JetStream replicas of both streams (3 in a cluster)."
    )
    dead_letter_max_age_seconds: int = Field(
        default=14 * 86_400, ge=0, description="How long dead letters are kept (0 = forever)."
    )

    # -- development ---------------------------------------------------------------------------
    reload: bool = Field(default=False, description="Restart on code changes (development).")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Read ``API_TOKEN_FILE``, ``NATS_URL_FILE``, ``REDIS_URL_FILE`` (one source each)."""
        if not isinstance(data, dict):
            return data
        for name, file_name in SECRET_FILE_SETTINGS.items():
            path = data.get(file_name)
            if _unset(path):
                continue
            if not _unset(data.get(name)):
                raise ValueError(
                    f"{name.upper()} and {file_name.upper()} are both set; set only one of them"
                )
            data = {**data, name: _read_secret_file(file_name.upper(), path)}
        return data

    @field_validator("nats_url", "task_modules", "worker_queues", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("nats_url")
    @classmethod
    def _nats_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one URL is required")
        for url in value:
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(
                    f"{redact_url(url)!r} is not a nats://, tls://, ws:// or wss:// URL"
                )
        return value

    @field_serializer("nats_url", "redis_url")
    def _without_credentials(self, value: str | list[str]) -> str | list[str]:
        # model_dump() and JSON never carry a password; the attributes keep the real URLs.
        if isinstance(value, list):
            return [redact_url(url) for url in value]
        return redact_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{redact_url(value)!r} is not a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("task_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not all(part.isidentifier() for part in module.split(".")):
                raise ValueError(f"{module!r} is not a Python module path")
        return value

    @field_validator("worker_queues")
    @classmethod
    def _queues(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one queue (the default is 'default')")
        for queue in value:
            check_queue(queue)
        if len(set(value)) != len(value):
            raise ValueError(f"a queue is named twice in {','.join(value)!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("nats_stream", "nats_consumer", "nats_dead_letter_stream", mode="after")
    @classmethod
    def _nats_name(cls, value: str) -> str:
        if not value or not set(value) <= _NATS_NAME_CHARS:
            raise ValueError(f"{value!r} may only contain letters, digits, '-' and '_'")
        return value

    @field_validator(
        "nats_subject", "nats_dead_letter_subject", "nats_schedule_subject", mode="after"
    )
    @classmethod
    def _nats_subject(cls, value: str) -> str:
        if not value or any(c in value for c in " *>\t\r\n") or ".." in value:
            raise ValueError(f"{value!r} is not a literal NATS subject")
        return value

    @model_validator(mode="after")
    def _distinct_streams(self) -> Settings:
        if self.nats_stream == self.nats_dead_letter_stream:
            raise ValueError("NATS_STREAM and NATS_DEAD_LETTER_STREAM must differ")
        if self.nats_subject == self.nats_dead_letter_subject:
            raise ValueError("NATS_SUBJECT and NATS_DEAD_LETTER_SUBJECT must differ")
        prefix, _, last = self.nats_dead_letter_subject.rpartition(".")
        if prefix == self.nats_subject:
            raise ValueError(
                "NATS_DEAD_LETTER_SUBJECT must not be one token below NATS_SUBJECT: "
                f"{self.nats_dead_letter_subject!r} is the subject of queue {last!r}"
            )
        schedules = self.nats_schedule_subject
        for name, subject in (
            ("NATS_SUBJECT", self.nats_subject),
            ("NATS_DEAD_LETTER_SUBJECT", self.nats_dead_letter_subject),
        ):
            if subject == schedules or subject.startswith(f"{schedules}."):
                raise ValueError(f"{name} must not be NATS_SCHEDULE_SUBJECT or below it")
            if schedules.startswith(f"{subject}."):
                raise ValueError(f"NATS_SCHEDULE_SUBJECT must not be below {name}")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.port == self.metrics_port:
            raise ValueError("PORT and METRICS_PORT must differ")
        if self.run_mode is RunMode.BOTH:
            if self.metrics_port == 65535:
                raise ValueError(
                    "METRICS_PORT must be below 65535 with RUN_MODE=both (the server uses "
                    "METRICS_PORT + 1)"
                )
            if self.port == self.metrics_port + 1:
                raise ValueError(
                    "PORT must differ from METRICS_PORT + 1 with RUN_MODE=both (the server's "
                    "metrics port)"
                )
        return self

    @property
    def server_metrics_port(self) -> int:
        """Port of the server's ``/metrics``, ``/livez`` and ``/readyz``.

        ``METRICS_PORT``; with ``RUN_MODE=both`` the worker keeps ``METRICS_PORT`` and the server
        takes ``METRICS_PORT + 1`` (two processes cannot share one port).
        """
        return self.metrics_port + 1 if self.run_mode is RunMode.BOTH else self.metrics_port

    @property
    def worker_slots(self) -> int:
        """Tasks one worker process runs at once: ``WORKER_CONCURRENCY`` per queue it serves."""
        return self.worker_concurrency * len(self.worker_queues)

    def queue_subject(self, queue: str) -> str:
        """Name the subject tasks of ``queue`` are published on (:mod:`app.queues`)."""
        return queue_subject(self.nats_subject, queue)

    @property
    def api_token_value(self) -> str | None:
        """The API token in clear (None when the API is open)."""
        return self.api_token.get_secret_value() if self.api_token is not None else None

    @property
    def consumer_max_deliver(self) -> int:
        """JetStream ``max_deliver`` of the consumer.

        One more than ``MAX_DELIVER``: the extra delivery of a message that failed ``MAX_DELIVER``
        times moves it to the dead-letter stream instead of running it again, whatever made the
        earlier attempts fail (a crash, an unknown task, a result that could not be saved).
        """
        return self.max_deliver + 1


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into one clear :class:`ConfigError`.

    :param overrides: values that take precedence over the environment (tests, tools).
    :return: the validated settings.
    :raises ConfigError: naming every bad environment variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            message = str(cause) if isinstance(cause, ValueError) else err["msg"]
            name = "_".join(str(p) for p in err["loc"][:1]).upper()
            # Never echo a secret: URLs lose their credentials (a value may be a whole URL).
            problems.append(redact(f"{name}: {message}" if name else message))
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once, on first use)."""
    return load_settings()
