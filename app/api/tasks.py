"""Task endpoints: list, dispatch, read status; plus the seed's ``/process`` example."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from taskiq.exceptions import SendTaskError

from app import metrics
from app.api.deps import KiqDep, require_token
from app.broker import KiqBroker
from app.errors import (
    DispatchError,
    InvalidRequestError,
    PayloadTooLargeError,
    ResultNotFoundError,
    describe_errors,
)
from app.registry import TaskSpec
from app.schemas import (
    DispatchRequest,
    DispatchResponse,
    ErrorResponse,
    ProcessResponse,
    TaskError,
    TaskInfo,
    TaskStatus,
)

router = APIRouter(
    tags=["tasks"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorResponse}},
)

MAX_WAIT_SECONDS = 60.0


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(size=int(declared), limit=limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(size=size, limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_dispatch(body: bytes) -> DispatchRequest:
    if not body.strip():
        return DispatchRequest()
    try:
        return DispatchRequest.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise InvalidRequestError(
                problem=f"malformed JSON body: {exc.errors()[0]['msg']}"
            ) from None
        problems = describe_errors(exc.errors(), "body")
        raise InvalidRequestError(
            problem=f'body must be {{"args": [...], "kwargs": {{...}}}}: {problems}'
        ) from None


async def dispatch(
    broker: KiqBroker, spec: TaskSpec, args: list[Any], kwargs: dict[str, Any]
) -> str:
    """Queue a task whose arguments were validated; record it so its status reads ``queued``.

    :return: the task id.
    :raises PayloadTooLargeError: when the message is over the size limit.
    :raises DispatchError: when NATS did not take the message.
    """
    task_id = broker.id_generator()
    kick = spec.task.kicker().with_task_id(task_id).kiq(*args, **kwargs)
    record = broker.results.record_dispatch(task_id, spec.name)
    outcomes = await asyncio.gather(kick, record, return_exceptions=True)
    kick_error = outcomes[0]
    if isinstance(kick_error, BaseException):
        await asyncio.gather(broker.results.forget_dispatch(task_id), return_exceptions=True)
        cause = kick_error.__cause__ if isinstance(kick_error, SendTaskError) else kick_error
        if isinstance(cause, PayloadTooLargeError):
            metrics.DISPATCH_ERRORS.labels(spec.name, "too_large").inc()
            raise cause
        metrics.DISPATCH_ERRORS.labels(spec.name, "broker").inc()
        raise DispatchError(reason=f"{type(cause).__name__}: {cause}") from kick_error
    metrics.TASKS_DISPATCHED.labels(spec.name).inc()
    return task_id


def _status(task_id: str, task_name: str | None, raw: dict[str, Any] | None) -> TaskStatus:
    if raw is None:
        return TaskStatus(task_id=task_id, task_name=task_name, status="queued")
    error = None
    if raw.get("is_err"):
        exc = raw.get("error") or {}
        message = exc.get("exc_message")
        if isinstance(message, list):
            message = ", ".join(str(m) for m in message)
        error = TaskError(type=str(exc.get("exc_type", "Exception")), message=str(message or ""))
    return TaskStatus(
        task_id=task_id,
        task_name=task_name,
        status="error" if error else "success",
        result=None if error else raw.get("return_value"),
        error=error,
        execution_time=raw.get("execution_time"),
    )


async def _wait_for(broker: KiqBroker, task_id: str, seconds: float) -> dict[str, Any] | None:
    # Woken by the result notification (see app.results), not by polling; a result that came
    # inline with the notification is not read from Redis again.
    if await broker.results.wait_for_result(task_id, seconds):
        return await broker.results.read_result(task_id)
    return None


@router.get("/tasks", response_model=list[TaskInfo])
async def list_tasks(kiq: KiqDep) -> list[TaskInfo]:
    """Registered tasks, with their parameters as JSON schema."""
    return [
        TaskInfo(name=spec.name, description=spec.doc, parameters=spec.json_schema())
        for spec in kiq.catalog.all()
    ]


@router.post(
    "/tasks/{task_name}",
    status_code=202,
    response_model=DispatchResponse,
    responses={
        200: {"model": TaskStatus, "description": "finished within `wait` seconds"},
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    openapi_extra={
        "parameters": [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "description": "Seconds to wait for the result (0 to 60): 200 with the result "
                "if it is ready in time, else 202.",
                "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
            }
        ],
        "requestBody": {
            "content": {"application/json": {"schema": DispatchRequest.model_json_schema()}}
        },
    },
)
async def dispatch_task(task_name: str, request: Request, kiq: KiqDep) -> JSONResponse:
    """Queue a task. Arguments are checked against its signature before anything is sent.

    The hot path of the API: it takes the request itself and answers with a ready response,
    which keeps FastAPI's per-request parameter and response processing to a minimum.
    """
    wait = _wait_seconds(request.query_params.get("wait"))
    spec = kiq.catalog.get(task_name)
    body = _parse_dispatch(await _read_body(request, kiq.settings.max_payload_bytes))
    spec.validate(body.args, body.kwargs)
    task_id = await dispatch(kiq.broker, spec, body.args, body.kwargs)
    if wait:
        raw = await _wait_for(kiq.broker, task_id, wait)
        if raw is not None:
            return JSONResponse(_status(task_id, spec.name, raw).model_dump(mode="json"))
    status_url = f"/tasks/{task_id}"
    return JSONResponse(
        {"task_id": task_id, "task_name": spec.name, "status_url": status_url},
        status_code=202,
        headers={"Location": status_url},
    )


def _wait_seconds(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise InvalidRequestError(problem=f"query.wait: {raw!r} is not a number") from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidRequestError(
            problem=f"query.wait: must be between 0 and {MAX_WAIT_SECONDS:g} seconds"
        )
    return wait


@router.get(
    "/tasks/{task_id}", response_model=TaskStatus, responses={404: {"model": ErrorResponse}}
)
async def get_task(task_id: str, kiq: KiqDep) -> TaskStatus:
    """State and result of a dispatched task."""
    raw, task_name = await kiq.broker.results.read_status(task_id)
    if raw is None and task_name is None:
        raise ResultNotFoundError(task_id=task_id)
    return _status(task_id, task_name, raw)


@router.post("/process", response_model=ProcessResponse)
async def process_data(data: str, kiq: KiqDep) -> ProcessResponse:
    """The seed's example: dispatch ``example_task`` for background processing."""
    from app.tasks.example import example_task

    spec = kiq.catalog.get(example_task.task_name)
    task_id = await dispatch(kiq.broker, spec, [data, len(data)], {})
    return ProcessResponse(task_id=task_id)
