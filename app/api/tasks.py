"""Task endpoints: list, dispatch, read status; plus the seed's ``/process`` example."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from app import idempotency
from app.api.deps import KiqDep, require_token
from app.broker import KiqBroker
from app.dispatch import dispatch
from app.errors import (
    ClientDisconnectedError,
    InvalidRequestError,
    PayloadTooLargeError,
    ResultNotFoundError,
    UnsupportedMediaTypeError,
    describe_errors,
)
from app.lifecycle.cancel import CancelOutcome, cancel_task, is_cancelled_result
from app.lifecycle.definitions import DELAY_LABEL, ETA_LABEL, due_time
from app.lifecycle.state import TaskRecord
from app.queues import queue_of
from app.schemas import (
    CancelResponse,
    DispatchRequest,
    DispatchResponse,
    ErrorResponse,
    ProcessResponse,
    TaskError,
    TaskInfo,
    TaskProgress,
    TaskStatus,
)

router = APIRouter(
    tags=["tasks"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorResponse}},
)

MAX_WAIT_SECONDS = 60.0


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_content_type(request: Request) -> bool:
    """Refuse a body declared as anything but JSON (HTML forms and ``text/plain`` fetches).

    Browsers send those cross-site without asking first, so an open API must not act on them.

    :return: whether a Content-Type was given (a body without one is refused once read).
    :raises UnsupportedMediaTypeError: on a non-JSON Content-Type.
    """
    content_type = request.headers.get("content-type")
    if content_type is None:
        return False
    if not _is_json(content_type):
        media = content_type.partition(";")[0].strip()[:100]
        raise UnsupportedMediaTypeError(
            problem=f"Content-Type must be application/json, not {media!r}"
        )
    return True


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(size=int(declared), limit=limit)
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(size=size, limit=limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnectedError() from None
    return b"".join(chunks)


def _non_finite(value: Any, where: str) -> str | None:
    """Find the first NaN or infinite number in parsed JSON: its path (None when there is none)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif isinstance(item, list):
            stack.extend((v, f"{path}.{i}") for i, v in enumerate(item))
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in item.items())
    return None


def _parse_dispatch(body: bytes, typed: bool) -> DispatchRequest:
    if not body.strip():
        return DispatchRequest()
    if not typed:
        raise UnsupportedMediaTypeError(
            problem="a request body needs Content-Type: application/json"
        )
    try:
        request = DispatchRequest.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise InvalidRequestError(
                problem=f"malformed JSON body: {exc.errors()[0]['msg']}"
            ) from None
        problems = describe_errors(exc.errors(), "body")
        raise InvalidRequestError(
            problem=f'body must be {{"args": [...], "kwargs": {{...}}}}: {problems}'
        ) from None
    where = _non_finite(request.args, "body.args") or _non_finite(request.kwargs, "body.kwargs")
    if where is not None:
        raise InvalidRequestError(
            problem=f"{where}: NaN, Infinity and numbers too large for a float are not valid JSON"
        )
    return request


def _queue(recorded: str | None, raw: dict[str, Any] | None) -> str | None:
    """Find the queue of a task: on its dispatch record, else in its result's labels."""
    if recorded is not None:
        return recorded
    if raw is not None and isinstance(raw.get("labels"), dict):
        return queue_of(raw["labels"])
    return None


def _status(
    task_id: str, task_name: str | None, raw: dict[str, Any] | None, queue: str | None
) -> TaskStatus:
    if raw is None:
        return TaskStatus(task_id=task_id, task_name=task_name, queue=queue, status="queued")
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
        queue=queue,
        status="cancelled" if is_cancelled_result(raw) else "error" if error else "success",
        result=None if error else raw.get("return_value"),
        error=error,
        execution_time=raw.get("execution_time"),
    )


def _record_status(task_id: str, record: TaskRecord) -> TaskStatus:
    """Build the status of a task from everything Redis holds about it."""
    status = _status(task_id, record.task_name, record.result, _queue(record.queue, record.result))
    if record.progress is not None:
        status.progress = TaskProgress.model_validate(record.progress)
    status.cancel_requested = record.cancel_requested
    if record.result is not None:
        return status
    state = record.state or {}
    eta = state.get("eta")
    due = eta is not None and datetime.fromisoformat(eta.replace("Z", "+00:00")) > datetime.now(UTC)
    if state.get("status") == "retrying":
        status.status = "retrying"
        status.eta = eta
        status.attempt = state.get("attempt")
        status.max_retries = state.get("max_retries")
        status.last_error = TaskError.model_validate(state.get("last_error") or {})
    elif state.get("status") == "scheduled" and due:
        status.status = "scheduled"
        status.eta = eta
    if status.status == "queued" and record.progress is not None:
        status.status = "running"
    return status


async def _wait_for(broker: KiqBroker, task_id: str, seconds: float) -> dict[str, Any] | None:
    # Woken by the result notification (see app.results), not by polling; a result that came
    # inline with the notification is not read from Redis again.
    if await broker.results.wait_for_result(task_id, seconds):
        return await broker.results.read_result(task_id)
    return None


@router.get("/tasks", response_model=list[TaskInfo])
async def list_tasks(kiq: KiqDep) -> list[TaskInfo]:
    """List the registered tasks, with their parameters as JSON schema."""
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
        409: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
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
            },
            {
                "name": idempotency.HEADER,
                "in": "header",
                "required": False,
                "description": "Queue the task at most once per key: a retry with the same key "
                "returns the first task (header `Idempotent-Replayed: true`). Same key with "
                "another task or other arguments: 422.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        ],
        "requestBody": {
            "content": {"application/json": {"schema": DispatchRequest.model_json_schema()}}
        },
    },
)
async def dispatch_task(task_name: str, request: Request, kiq: KiqDep) -> JSONResponse:
    """Queue a task. Arguments are checked against its signature before anything is sent.

    With an ``Idempotency-Key`` header, a retry with the same key returns the task the first
    request queued (``Idempotent-Replayed: true``) instead of queueing another one.

    The hot path of the API: it takes the request itself and answers with a ready response,
    which keeps FastAPI's per-request parameter and response processing to a minimum.
    """
    wait = _wait_seconds(request.query_params.get("wait"))
    typed = check_content_type(request)
    key = request.headers.get(idempotency.HEADER)
    if key is not None:
        key = idempotency.check_key(key)
    spec = kiq.catalog.get(task_name)
    body = _parse_dispatch(await _read_body(request, kiq.settings.max_payload_bytes), typed)
    spec.validate(body.args, body.kwargs)
    labels = _schedule_labels(body, kiq.settings.max_schedule_delay_seconds)
    headers: dict[str, str] = {}
    if key is None:
        task_id = await dispatch(kiq.broker, spec.task, body.args, body.kwargs, labels=labels)
    else:
        outcome = await idempotency.dispatch_once(
            kiq.broker, spec.task, key, body.args, body.kwargs, labels=labels
        )
        task_id = outcome.task_id
        if outcome.replayed:
            headers[idempotency.REPLAYED_HEADER] = "true"
    if wait:
        raw = await _wait_for(kiq.broker, task_id, wait)
        if raw is not None:
            return JSONResponse(
                _status(task_id, spec.name, raw, queue_of(spec.task.labels)).model_dump(
                    mode="json"
                ),
                headers=headers,
            )
    status_url = f"/tasks/{task_id}"
    return JSONResponse(
        {"task_id": task_id, "task_name": spec.name, "status_url": status_url},
        status_code=202,
        headers={"Location": status_url, **headers},
    )


def _schedule_labels(body: DispatchRequest, max_delay: int) -> dict[str, Any]:
    """Build the labels of a delayed dispatch (checked now: 422 before anything is recorded)."""
    labels: dict[str, Any] = {}
    if body.delay_seconds is not None:
        if not math.isfinite(body.delay_seconds):
            raise InvalidRequestError(problem="body.delay_seconds: must be a finite number")
        labels[DELAY_LABEL] = body.delay_seconds
    if body.eta is not None:
        labels[ETA_LABEL] = body.eta
    due_time(labels, max_delay)  # raises ScheduleError (422) with the reason
    return labels


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
    record = await kiq.broker.results.read_record(task_id)
    if not record.known:
        raise ResultNotFoundError(task_id=task_id)
    return _record_status(task_id, record)


@router.delete(
    "/tasks/{task_id}",
    response_model=CancelResponse,
    responses={
        202: {"model": CancelResponse, "description": "queued or running: cancelling"},
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "already finished"},
    },
)
async def cancel(task_id: str, kiq: KiqDep) -> JSONResponse:
    """Cancel a task: a delayed or queued task never starts; a running task is told.

    200 ``cancelled``: it will never run (it was delayed or waiting for a retry, or is cancelled
    already). 202 ``cancelling``: it is queued (a worker drops it before it starts) or running (the
    task sees the request if it checks ``Cancellation``; otherwise it runs to its end).
    """
    outcome = await cancel_task(kiq.broker, task_id, require_known=True)
    code = 200 if outcome is CancelOutcome.CANCELLED else 202
    return JSONResponse({"task_id": task_id, "status": outcome.value}, status_code=code)


@router.post("/process", response_model=ProcessResponse, responses={415: {"model": ErrorResponse}})
async def process_data(data: str, request: Request, kiq: KiqDep) -> ProcessResponse:
    """Dispatch ``example_task`` for background processing (the seed's example)."""
    from app.tasks.example import example_task

    check_content_type(request)  # no HTML form may trigger it
    spec = kiq.catalog.get(example_task.task_name)
    task_id = await dispatch(kiq.broker, spec.task, [data, len(data)], {})
    return ProcessResponse(task_id=task_id)
