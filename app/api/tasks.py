"""Task endpoints: list, dispatch, read status; plus the seed's ``/process`` example."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError
from taskiq.exceptions import SendTaskError

from app import metrics
from app.api.deps import require_token
from app.broker import KiqBroker
from app.config import Settings
from app.errors import (
    DispatchError,
    InvalidRequestError,
    PayloadTooLargeError,
    ResultNotFoundError,
)
from app.registry import TaskCatalog, TaskSpec
from app.schemas import (
    DispatchRequest,
    DispatchResponse,
    ErrorResponse,
    ProcessResponse,
    TaskError,
    TaskInfo,
    TaskStatus,
)


# The dependencies of the dispatch path are ``async def``: FastAPI runs a plain ``def`` dependency
# in a worker thread, and four thread hops per request cost more CPU than the dispatch itself.
async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _broker(request: Request) -> KiqBroker:
    broker: KiqBroker = request.app.state.broker
    return broker


async def _catalog(request: Request) -> TaskCatalog:
    catalog: TaskCatalog = request.app.state.catalog
    return catalog


async def _authorized(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> None:
    require_token(request, settings)


SettingsDep = Annotated[Settings, Depends(_settings)]
BrokerDep = Annotated[KiqBroker, Depends(_broker)]
CatalogDep = Annotated[TaskCatalog, Depends(_catalog)]

router = APIRouter(
    tags=["tasks"],
    dependencies=[Depends(_authorized)],
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
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(problem=f"malformed JSON body: {exc}") from None
    try:
        return DispatchRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
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
    # Woken by the result notification (see app.results), not by polling.
    await broker.results.wait_for_result(task_id, seconds)
    raw, _ = await broker.results.read_status(task_id)
    return raw


@router.get("/tasks", response_model=list[TaskInfo])
async def list_tasks(catalog: CatalogDep) -> list[TaskInfo]:
    """Registered tasks, with their parameters as JSON schema."""
    return [
        TaskInfo(name=spec.name, description=spec.doc, parameters=spec.json_schema())
        for spec in catalog.all()
    ]


@router.post(
    "/tasks/{task_name}",
    status_code=202,
    response_model=DispatchResponse | TaskStatus,
    responses={
        200: {"model": TaskStatus, "description": "finished within `wait` seconds"},
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": DispatchRequest.model_json_schema()}}
        }
    },
)
async def dispatch_task(
    task_name: str,
    request: Request,
    response: Response,
    broker: BrokerDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    wait: Annotated[
        float | None,
        Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for the result (max 60)."),
    ] = None,
) -> DispatchResponse | TaskStatus:
    """Queue a task. Arguments are checked against its signature before anything is sent."""
    spec = catalog.get(task_name)
    body = _parse_dispatch(await _read_body(request, settings.max_payload_bytes))
    spec.validate(body.args, body.kwargs)
    task_id = await dispatch(broker, spec, body.args, body.kwargs)
    if wait:
        raw = await _wait_for(broker, task_id, wait)
        if raw is not None:
            response.status_code = 200
            return _status(task_id, spec.name, raw)
    response.headers["Location"] = f"/tasks/{task_id}"
    return DispatchResponse(task_id=task_id, task_name=spec.name, status_url=f"/tasks/{task_id}")


@router.get(
    "/tasks/{task_id}", response_model=TaskStatus, responses={404: {"model": ErrorResponse}}
)
async def get_task(task_id: str, broker: BrokerDep) -> TaskStatus:
    """State and result of a dispatched task."""
    raw, task_name = await broker.results.read_status(task_id)
    if raw is None and task_name is None:
        raise ResultNotFoundError(task_id=task_id)
    return _status(task_id, task_name, raw)


@router.post("/process", response_model=ProcessResponse)
async def process_data(data: str, broker: BrokerDep, catalog: CatalogDep) -> ProcessResponse:
    """The seed's example: dispatch ``example_task`` for background processing."""
    from app.tasks.example import example_task

    spec = catalog.get(example_task.task_name)
    task_id = await dispatch(broker, spec, [data, len(data)], {})
    return ProcessResponse(task_id=task_id)
