"""The FastAPI application: ``create_app(settings)`` builds it; nothing happens at import."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__, metrics
from app.api import routers
from app.api.deps import Kiq, Lifecycle
from app.api.docs import install_docs
from app.broker import KiqBroker
from app.config import RunMode, Settings, get_settings
from app.errors import AppError, ClientDisconnectedError, describe_errors
from app.logs import configure_logging
from app.redact import redact
from app.registry import TaskCatalog

logger = logging.getLogger("kiqstack.api")


def import_task_modules(settings: Settings) -> None:
    """Import ``TASK_MODULES`` so their tasks are registered on the shared broker.

    The built-in ``kiqstack.*`` tasks are registered whatever ``TASK_MODULES`` says.

    :param settings: kiqstack settings.
    """
    for module in settings.task_modules:
        importlib.import_module(module)


class HTTPMetricsMiddleware:
    """Count and time requests by route template (pure ASGI: cheap on the hot path).

    FastAPI's routes name themselves in the scope. Starlette's own (``/openapi.json``, the docs
    assets mounted under ``/docs/assets``) do not: they are found in ``routes`` by their path, so
    they count under their template (``/docs/assets/{path}``), and only a path no route serves
    counts as ``unmatched``.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = ()) -> None:
        """Wrap an ASGI app.

        :param app: the app.
        :param routes: the app's routes (to name those that do not name themselves).
        """
        self.app = app
        self.routes = routes
        # Metric children by (method, route, status): looked up once, not per request.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        root_path = scope.get("root_path", "")  # a Mount changes it in the scope

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or self._template(scope, root_path)
            key = (scope.get("method", ""), template, status)
            series = self._series.get(key)
            if series is None:
                method = key[0]
                series = self._series[key] = (
                    metrics.HTTP_REQUESTS.labels(method, template, str(status)),
                    metrics.HTTP_DURATION.labels(method, template),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started)

    def _template(self, scope: Scope, root_path: str) -> str:
        """Find the template of the route serving a request that did not name its route."""
        request = {**scope, "root_path": root_path}
        for route in self.routes:
            if route.matches(request)[0] is Match.FULL:
                return str(getattr(route, "path_format", None) or "unmatched")
        return "unmatched"


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101
    if isinstance(exc, ClientDisconnectedError):
        # Nobody reads this answer; it is counted as 499 in the metrics, with one log line.
        logger.info(
            "client went away before its request was read (499): %s %s",
            request.method,
            request.url.path,
        )
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(
        {"detail": redact(exc.detail)}, status_code=exc.status_code, headers=headers
    )


def _slash_twin(request: Request) -> str | None:
    """Return the path with its trailing slash added or removed, when a route serves that one."""
    path: str = request.scope["path"]
    twin = path.rstrip("/") if path.endswith("/") else f"{path}/"
    if not twin.startswith("/") or twin.startswith(("//", "/\\")):
        return None
    scope = {**request.scope, "path": twin}
    if any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return twin
    return None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101
    if exc.status_code == 404 and (twin := _slash_twin(request)) is not None:
        # A relative Location: never built from the Host header (no open redirect).
        query = request.scope.get("query_string", b"").decode("latin-1")
        return RedirectResponse(f"{twin}?{query}" if query else twin, status_code=307)
    return await http_exception_handler(request, exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    return JSONResponse({"detail": describe_errors(exc.errors(), "request")}, status_code=422)


async def _redis_error(_: Request, exc: Exception) -> JSONResponse:
    logger.warning("result store unavailable: %s", exc)
    return JSONResponse(
        {"detail": f"result store (Redis) unavailable: {type(exc).__name__}"}, status_code=503
    )


def create_app(
    settings: Settings | None = None,
    lifecycle: Lifecycle | None = None,
    *,
    metrics_port: int | None = None,
    broker: KiqBroker | None = None,
) -> FastAPI:
    """Build the API.

    :param settings: settings to use (default: read from the environment).
    :param lifecycle: shared draining state (the server runner flips it on SIGTERM).
    :param metrics_port: serve ``/metrics``, ``/livez`` and ``/readyz`` on this port while the app
        runs (the server does; tests in-process do not).
    :param broker: the broker to dispatch with, used as it is (its own settings, transport and
        result backend; ``app.tasks.broker.build_broker``). Default: the process-wide broker of
        ``app.tasks.broker``, configured with ``settings``.
    :return: the FastAPI application.
    """
    settings = settings or get_settings()
    lifecycle = lifecycle or Lifecycle()
    if broker is None:
        from app.tasks.broker import broker as shared

        shared.configure(settings)
    kiq_broker = broker if broker is not None else shared
    import_task_modules(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        probes = None
        if metrics_port is not None:
            from app.probes import ServerProbes

            probes = ServerProbes(kiq, settings.host, metrics_port)
            await probes.start()
        scheduler: asyncio.Task[None] | None = None
        stop_scheduler = asyncio.Event()
        try:
            if not kiq_broker.is_worker_process:
                lifecycle.broker_started = await _start_unless_stopped(kiq_broker, lifecycle)
            if settings.run_mode is RunMode.BOTH and lifecycle.broker_started:
                # RUN_MODE=both: the server process keeps the periodic schedules too.
                from app.scheduler import Reconciler

                scheduler = asyncio.create_task(
                    Reconciler(kiq_broker).run(settings.scheduler_interval_seconds, stop_scheduler)
                )
            if lifecycle.stop_requested.is_set():
                logger.info("stopped by a signal before the API was ready")
            else:
                logger.info("kiqstack API %s ready on port %d", __version__, settings.port)
            yield
        finally:
            stop_scheduler.set()
            if scheduler is not None:
                await scheduler
            lifecycle.draining = True
            if lifecycle.broker_started:
                lifecycle.broker_started = False
                await kiq_broker.shutdown()
            if probes is not None:
                await probes.stop()

    app = FastAPI(
        title="kiqstack",
        version=__version__,
        description="Dispatch background tasks to taskiq workers over NATS JetStream; "
        "read their results from Redis.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from install_docs, with local assets (no CDN)
        redoc_url=None,
        # Starlette's own redirect builds an absolute URL from the Host header: see _http_error.
        redirect_slashes=False,
    )
    install_docs(app)
    kiq = app.state.kiq = Kiq(settings, kiq_broker, TaskCatalog(kiq_broker), lifecycle)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_middleware(HTTPMetricsMiddleware, routes=app.router.routes)
    for router in routers:
        app.include_router(router)
    return app


async def _start_unless_stopped(kiq_broker: KiqBroker, lifecycle: Lifecycle) -> bool:
    """Connect the broker, unless a stop signal comes first (then give the wait up).

    :return: whether the broker started.
    """
    startup = asyncio.ensure_future(kiq_broker.startup())
    stop = asyncio.ensure_future(lifecycle.stop_requested.wait())
    try:
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if startup.done():
        startup.result()  # raises what the startup raised (NATS unreachable within its bound)
        return True
    startup.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await startup
    with contextlib.suppress(Exception):
        await kiq_broker.shutdown()  # whatever the cancelled startup had opened
    return False


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory app.main:app_factory`` (reload mode)."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings, metrics_port=settings.server_metrics_port)


def __getattr__(name: str) -> Any:
    # ``uvicorn app.main:app`` works too, building the app on first access (not at import).
    if name == "app":
        return app_factory()
    raise AttributeError(name)
