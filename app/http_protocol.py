"""The API's HTTP edge: uvicorn's httptools protocol with the limits uvicorn does not have.

uvicorn bounds the idle time between keep-alive requests and, with ``limit_concurrency``, answers
503 past a number of connections, but it gives a client unlimited time to send its headers and
body, and unlimited room for them (httptools has no header size limit). Before any
authentication, that lets a few hundred slow clients (slowloris) hold every file descriptor, and a
handful of endless header lines fill the memory. :class:`GuardedHttpToolsProtocol` adds:

* a **header deadline** armed when a connection opens (and when the first byte of each further
  keep-alive request arrives): the request line and headers must be complete in time, else 408 and
  the connection is closed (silently when the client sent nothing at all);
* a **body deadline** armed when the headers are complete: the body must be in by then, else the
  connection is closed (408 if no answer was started);
* a cap on the **header section size** (request line included) and on the **number of header
  fields**: 431 and the connection is closed; bytes are counted as they arrive, so one connection
  never buffers much more than the limit;
* a hard cap on **open connections**: one more is answered 503 and closed at once, so the process
  keeps file descriptors for NATS, Redis and its probe port.

Each closed connection is counted in ``kiqstack_http_connections_closed_total{reason}`` and
reported in a log line at most every few seconds per reason (a flood does not flood the logs).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app import metrics
from app.config import Settings

logger = logging.getLogger("kiqstack.http")

#: File descriptors kept free for everything but API connections (at least this many, or a
#: quarter of the open-files limit): NATS, Redis connections, the probe port, logs.
FD_RESERVE = 128
_REPORT_EVERY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Limits of the API port that uvicorn does not enforce itself."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 2000

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        """Read the limits of the ``HTTP_*`` settings, the connection cap fitted to the fds."""
        return cls(
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            max_header_bytes=settings.http_max_header_bytes,
            max_headers=settings.http_max_headers,
            max_connections=fit_to_open_files(settings.http_max_connections),
        )


def fit_to_open_files(max_connections: int) -> int:
    """Lower a connection cap so that API connections cannot use up the open-files limit.

    :param max_connections: ``HTTP_MAX_CONNECTIONS``.
    :return: the cap, at most the soft ``RLIMIT_NOFILE`` minus a reserve (logged when lowered).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    budget = max(16, soft - max(FD_RESERVE, soft // 4))
    if max_connections <= budget:
        return max_connections
    logger.info(
        "HTTP_MAX_CONNECTIONS lowered from %d to %d: the open-files limit (ulimit -n) is %d",
        max_connections,
        budget,
        soft,
    )
    return budget


class _Reporter:
    """Count closed connections; log at most one line per reason every few seconds."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._unreported: Counter[str] = Counter()

    def closed(self, reason: str, peer: str, what: str) -> None:
        metrics.HTTP_CONNECTIONS_CLOSED.labels(reason).inc()
        now = time.monotonic()
        if now < self._next.get(reason, 0.0):
            self._unreported[reason] += 1
            return
        self._next[reason] = now + _REPORT_EVERY_SECONDS
        more = self._unreported.pop(reason, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        logger.warning("closed connection from %s: %s%s", peer, what, suffix)


_reporter = _Reporter()


def _answer(status: int, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol with header/body deadlines, header caps and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Create the protocol of one connection (uvicorn calls this)."""
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "limits", None)
        self.limits = limits if isinstance(limits, HttpLimits) else HttpLimits()
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request line and headers
        self._head_bytes = 0
        self._head_fields = 0
        self._refused = False

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept a connection, or answer 503 and close it when too many are open."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                "too many connections",
                "max_connections",
                f"more than {self.limits.max_connections} connections open",
            )
            return
        self._arm(self.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and its deadline."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse bytes; refuse a header section over the size limit as soon as it is."""
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431,
                    f"request line and headers exceed {self.limits.max_header_bytes} bytes",
                    "header_too_large",
                    f"request headers over {self.limits.max_header_bytes} bytes",
                )

    # -- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        """Start a request; a keep-alive request gets its own header deadline."""
        if self._refused:
            return
        self._in_head = True
        self._head_bytes = 0
        self._head_fields = 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout, "header_timeout")
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Collect the request target."""
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header field, up to the allowed number."""
        if self._refused:
            return
        self._head_fields += 1
        if self._head_fields > self.limits.max_headers:
            self._refuse(
                431,
                f"more than {self.limits.max_headers} header fields",
                "too_many_headers",
                f"more than {self.limits.max_headers} header fields",
            )
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Headers are in: the body deadline starts."""
        if self._refused:
            return
        self._in_head = False
        self._arm(self.limits.body_timeout, "body_timeout")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Collect body bytes."""
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """Note that the request is fully read: no deadline until the next one starts."""
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    # -- deadlines ----------------------------------------------------------------------------
    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if self._refused or self.transport.is_closing():
            return
        if reason == "header_timeout":
            limit = self.limits.header_timeout
            what = f"request headers not complete within {limit:g}s"
            # Nothing received at all: an idle connection, closed without an answer.
            status = 408 if self._head_bytes else None
        else:
            limit = self.limits.body_timeout
            what = f"request body not complete within {limit:g}s"
            status = None if self.cycle is not None and self.cycle.response_started else 408
        detail = f"request not received within {limit:g}s"
        self._refuse(status, detail, reason, what)

    def _refuse(self, status: int | None, detail: str, reason: str, what: str) -> None:
        """Answer ``status`` (unless None) and close the connection; ignore what follows."""
        self._refused = True
        self._disarm()
        client = self.client
        _reporter.closed(reason, f"{client[0]}:{client[1]}" if client else "?", what)
        if status is not None:
            self.transport.write(_answer(status, detail))
        self.transport.close()


class EdgeConfig(uvicorn.Config):
    """uvicorn config that carries :class:`HttpLimits` to :class:`GuardedHttpToolsProtocol`."""

    def __init__(self, app: Any, *, limits: HttpLimits, **kwargs: Any) -> None:
        """Create the config.

        :param app: ASGI app, or an import string (reload mode).
        :param limits: the API port's limits.
        :param kwargs: other uvicorn settings.
        """
        super().__init__(app, http=GuardedHttpToolsProtocol, **kwargs)
        self.limits = limits


def edge_config(settings: Settings, app: Any, **kwargs: Any) -> EdgeConfig:
    """Build the uvicorn config of the API port, with every ``HTTP_*`` limit applied.

    :param settings: kiqstack settings.
    :param app: ASGI app, or an import string (reload mode).
    :param kwargs: further uvicorn settings.
    :return: the config.
    """
    return EdgeConfig(
        app,
        limits=HttpLimits.from_settings(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_keep_alive=settings.http_keepalive_timeout_seconds,
        limit_concurrency=settings.http_limit_concurrency,
        backlog=settings.http_backlog,
        **kwargs,
    )
