"""Dependencies shared by the routers."""

from __future__ import annotations

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
    broker_started: bool = field(default=False)


def get_settings_dep(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_broker(request: Request) -> KiqBroker:
    """The shared broker."""
    broker: KiqBroker = request.app.state.broker
    return broker


def get_catalog(request: Request) -> TaskCatalog:
    """The registered tasks."""
    catalog: TaskCatalog = request.app.state.catalog
    return catalog


def get_lifecycle(request: Request) -> Lifecycle:
    """The process lifecycle state."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
BrokerDep = Annotated[KiqBroker, Depends(get_broker)]
CatalogDep = Annotated[TaskCatalog, Depends(get_catalog)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


def require_token(request: Request, settings: SettingsDep) -> None:
    """Check ``Authorization: Bearer <API_TOKEN>`` when a token is configured.

    :raises UnauthorizedError: on a missing or wrong token (the answer says no more than that).
    """
    expected = settings.api_token
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise UnauthorizedError()
