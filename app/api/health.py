"""Probes: ``/livez`` (process only), ``/readyz`` (dependencies).

Served on the API port and, with ``/metrics``, on the metrics port (:mod:`app.probes`).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from app.api.deps import KiqDep

router = APIRouter(tags=["health"])


@router.get("/livez", response_class=PlainTextResponse)
async def livez() -> str:
    """Answer while the process runs; never touches NATS or Redis."""
    return "ok"


@router.get("/readyz")
async def readyz(kiq: KiqDep) -> JSONResponse:
    """Ready when NATS is connected with its stream and consumer, and Redis answers.

    503 while draining, and while NATS is down or has lost the task stream (NATS restarted
    without its data): the stream and the consumer are then recreated in the background.
    """
    broker, lifecycle = kiq.broker, kiq.lifecycle
    checks: dict[str, str] = {}
    if lifecycle.draining:
        checks["server"] = "draining"
    problem = await broker.jetstream_problem() if lifecycle.broker_started else "disconnected"
    checks["nats"] = problem or "ok"
    try:
        await asyncio.wait_for(broker.results.ping(), 2)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    ready = not lifecycle.draining and checks["nats"] == "ok" and checks["redis"] == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
