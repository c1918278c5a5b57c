"""Dependencies shared by the routers.

Everything a handler needs lives in one :class:`Kiq` context on ``app.state``, served by a single
``async def`` dependency: FastAPI resolves it once per request (a plain ``def`` dependency would
hop to a worker thread, which costs more CPU than a task dispatch).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.broker import KiqBroker
from app.config import Settings
from app.errors import UnauthorizedError
from app.registry import TaskCatalog


@dataclass
class Lifecycle:
    """Process state the probes report (``draining`` is set on SIGTERM)."""

    draining: bool = False
    broker_started: bool = False
    #: Set by a stop signal that comes before startup is over: the NATS connect wait gives up.
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Kiq:
    """What the API's handlers work with."""

    settings: Settings
    broker: KiqBroker
    catalog: TaskCatalog
    lifecycle: Lifecycle


async def get_kiq(request: Request) -> Kiq:
    """Return the app's :class:`Kiq` context."""
    kiq: Kiq = request.app.state.kiq
    return kiq


KiqDep = Annotated[Kiq, Depends(get_kiq)]


async def require_token(request: Request, kiq: KiqDep) -> None:
    """Check ``Authorization: Bearer <API_TOKEN>`` when a token is configured.

    :raises UnauthorizedError: on a missing or wrong token (the answer says no more than that).
    """
    expected = kiq.settings.api_token_value
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise UnauthorizedError()
