"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DispatchRequest(BaseModel):
    """Arguments of a task."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")


class DispatchResponse(BaseModel):
    """A queued task."""

    task_id: str
    task_name: str
    status_url: str


class TaskError(BaseModel):
    """The exception a task raised."""

    type: str
    message: str


class TaskStatus(BaseModel):
    """State and result of a task."""

    task_id: str
    task_name: str | None
    queue: str | None = Field(
        default=None, description="The task's queue (null when nothing recorded it)."
    )
    status: Literal["queued", "success", "error"]
    result: Any = None
    error: TaskError | None = None
    execution_time: float | None = None


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
