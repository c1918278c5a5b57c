"""The one place kiqstack reads its configuration from: environment variables.

Every field maps to the upper-case environment variable of the same name (``nats_url`` is
``NATS_URL``). The chart, the image, the e2e suite and the benchmarks rely on these names; they are
listed, with their defaults, in the README's settings table and in ``docs/contract.md``.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigError


class RunMode(enum.StrEnum):
    """The role a kiqstack process plays."""

    SERVER = "server"
    WORKER = "worker"
    BOTH = "both"


_NATS_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """kiqstack settings, read from the environment (no prefix)."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    # -- connections ---------------------------------------------------------------------------
    nats_url: Annotated[list[str], NoDecode] = Field(
        default=["nats://localhost:4222"],
        description="NATS server URL; a comma-separated list for a cluster.",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0", description="Redis URL for task results."
    )

    nats_connect_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="How long broker.startup() (the API server, your own scripts) waits for NATS "
        "before it fails with an error naming NATS_URL; a worker keeps retrying until stopped.",
    )

    # -- process role and ports ----------------------------------------------------------------
    run_mode: RunMode = Field(default=RunMode.SERVER, description="server, worker or both.")
    host: str = Field(default="0.0.0.0", description="Address the API and metrics servers bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="API port.")
    metrics_port: int = Field(
        default=9000, ge=1, le=65535, description="Worker metrics and probe port."
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
    api_token: str | None = Field(
        default=None,
        description="Bearer token required on the task endpoints; unset leaves them open.",
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

    @field_validator("nats_url", "task_modules", mode="before")
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
                raise ValueError(f"{url!r} is not a nats://, tls://, ws:// or wss:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value!r} is not a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("task_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not all(part.isidentifier() for part in module.split(".")):
                raise ValueError(f"{module!r} is not a Python module path")
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

    @field_validator("nats_subject", "nats_dead_letter_subject", mode="after")
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
        return self

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
            name = "_".join(str(p) for p in err["loc"][:1]).upper() or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once, on first use)."""
    return load_settings()
