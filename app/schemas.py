"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DispatchRequest(BaseModel):
    """Arguments of a task."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    delay_seconds: float | None = Field(
        default=None,
        description="Run the task this many seconds from now (0 to MAX_SCHEDULE_DELAY_SECONDS); "
        "its status reads `scheduled` until then.",
    )
    eta: str | None = Field(
        default=None,
        description="Run the task at this time: ISO 8601 with a time zone "
        "(`2030-01-01T09:00:00+02:00`, `...Z`). Not together with `delay_seconds`.",
    )


class DispatchResponse(BaseModel):
    """A queued task."""

    task_id: str
    task_name: str
    status_url: str


class TaskError(BaseModel):
    """The exception a task raised."""

    type: str
    message: str


class TaskProgress(BaseModel):
    """The last progress a running task reported."""

    value: float
    message: str | None = None
    at: float = Field(description="Epoch seconds of the report.")


class TaskStatus(BaseModel):
    """State and result of a task."""

    task_id: str
    task_name: str | None
    queue: str | None = Field(
        default=None, description="The task's queue (null when nothing recorded it)."
    )
    status: Literal["queued", "scheduled", "running", "retrying", "success", "error", "cancelled"]
    result: Any = None
    error: TaskError | None = None
    execution_time: float | None = None
    eta: str | None = Field(
        default=None, description="When a scheduled task or the next retry is due (RFC3339)."
    )
    attempt: int | None = Field(default=None, description="The attempt a retrying task is at.")
    max_retries: int | None = None
    last_error: TaskError | None = Field(
        default=None, description="The error of the last failed attempt (retrying)."
    )
    progress: TaskProgress | None = None
    cancel_requested: bool = False


class CancelResponse(BaseModel):
    """What a cancel request did."""

    task_id: str
    status: Literal["cancelled", "cancelling"] = Field(
        description="`cancelled`: it will never run; `cancelling`: queued or running, a worker "
        "drops it before it starts, a running task sees the request."
    )


class TaskInfo(BaseModel):
    """A registered task."""

    name: str
    description: str | None
    parameters: dict[str, Any] = Field(description="JSON schema of the task's arguments.")


class ProcessResponse(BaseModel):
    """Answer of the seed's ``/process`` example."""

    task_id: str


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    detail: Any
