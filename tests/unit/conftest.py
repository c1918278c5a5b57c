"""Fixtures of the unit layer: no server at all (a transport in memory, fakeredis).

They override the root conftest's ``settings``, ``app`` and ``client``, which start real NATS and
Redis servers: the same tests' shapes, in seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.broker import KiqBroker
from app.config import Settings, load_settings
from tests.support.memory import MemoryTransport, memory_broker
from tests.support.stack import unique_names
from tests.support.worker import InProcessWorker


@pytest.fixture
def settings() -> Settings:
    """Settings of this test (names of its own; nothing is connected)."""
    names = {key.lower(): value for key, value in unique_names("u").items()}
    return load_settings(redelivery_delay_seconds=0.5, **names)


@pytest.fixture
def memory(settings: Settings) -> tuple[KiqBroker, MemoryTransport]:
    """A broker over a transport in memory and fakeredis, with the shared broker's tasks."""
    return memory_broker(settings)


@pytest.fixture
def broker(memory: tuple[KiqBroker, MemoryTransport]) -> KiqBroker:
    """The broker of :func:`memory`."""
    return memory[0]


@pytest.fixture
def transport(memory: tuple[KiqBroker, MemoryTransport]) -> MemoryTransport:
    """The transport of :func:`memory`."""
    return memory[1]


@pytest.fixture
def app(settings: Settings, broker: KiqBroker) -> FastAPI:
    """The API over the broker in memory."""
    from app.main import create_app

    return create_app(settings, broker=broker)


@pytest.fixture
async def worker(broker: KiqBroker) -> AsyncIterator[InProcessWorker]:
    """A worker in this process running what the broker in memory delivers."""
    async with InProcessWorker(broker) as running:
        yield running


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")


def body_of(response: httpx.Response) -> Any:
    """A response's JSON."""
    return response.json()
