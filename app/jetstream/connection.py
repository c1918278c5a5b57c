"""The NATS connection: a bounded (or, in a worker, stoppable) first connect, then reconnects.

nats-py is told to reconnect for ever with no wait of its own; :meth:`Connection._on_error`, which
it calls after every failed attempt, spaces the attempts out with a capped backoff and says so in
one log line, without a traceback and without the password of ``NATS_URL``.

A worker waits for NATS as long as it takes: :class:`StopSignals` notices SIGTERM/SIGINT, which
ends that wait at once without an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from app.config import Settings
from app.errors import NatsUnavailableError
from app.redact import redact_url
from app.retry import Backoff, describe_error

logger = logging.getLogger("kiqstack.broker")


class StopSignals:
    """Notice SIGTERM/SIGINT in a worker, then call the handlers installed before (taskiq's).

    :attr:`requested` is set from the signal handler (through the event loop), so a coroutine can
    wait for it; :attr:`stopping` is true from the first signal on.
    """

    def __init__(self) -> None:
        """Create the watcher (no handler installed until :meth:`install`)."""
        self.requested = asyncio.Event()
        self.stopping = False
        self._saved: dict[int, Any] = {}

    def install(self, on_stop: Callable[[], None] | None = None) -> None:
        """Install the handlers (main thread only; once).

        :param on_stop: called from the handler on every signal (before the previous handler).
        """
        if threading.current_thread() is not threading.main_thread() or self._saved:
            return
        loop = asyncio.get_running_loop()
        requested = self.requested

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stopping = True
            if on_stop is not None:
                on_stop()
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(requested.set)
            previous = self._saved.get(signum)
            if callable(previous):
                previous(signum, frame)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)

    def restore(self) -> None:
        """Put the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._saved.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)
        self._saved.clear()


class Connection:
    """One NATS connection with its JetStream context, made afresh by every :meth:`connect`."""

    def __init__(self, settings: Settings) -> None:
        """Create the connection object (nothing is connected until :meth:`connect`).

        :param settings: kiqstack settings (``NATS_URL``, ``NATS_CONNECT_TIMEOUT_SECONDS``).
        """
        self.settings = settings
        self.client = Client()
        self.js: JetStreamContext = self.client.jetstream()
        #: Set while the process stops: connection trouble is then logged quietly.
        self.stopping = False
        #: Called after each successful reconnection.
        self.on_reconnected: list[Callable[[], None]] = []
        self._backoff = Backoff()
        self._last_error: BaseException | None = None

    @property
    def urls(self) -> str:
        """``NATS_URL`` as it may be shown in logs and errors (passwords replaced)."""
        return ",".join(redact_url(url) for url in self.settings.nats_url)

    @property
    def is_connected(self) -> bool:
        """Tell whether the connection is up."""
        return bool(self.client.is_connected)

    @property
    def is_closed(self) -> bool:
        """Tell whether the connection was closed for good."""
        return bool(self.client.is_closed)

    def quiet(self) -> int:
        """Log level of connection trouble: expected while stopping, worth a warning otherwise."""
        return logging.INFO if self.stopping else logging.WARNING

    async def connect(self, *, name: str, limit: float | None, stop: asyncio.Event) -> bool:
        """Connect, retrying with a capped backoff (one log line per attempt).

        :param name: role of this process, part of the client name NATS shows.
        :param limit: seconds to wait at most (None: until ``stop`` is set).
        :param stop: set when the process is asked to stop while it waits.
        :return: False when ``stop`` was set before NATS answered.
        :raises NatsUnavailableError: when ``limit`` passes.
        """
        settings = self.settings
        self.client = Client()  # a fresh client per startup
        self._backoff.reset()
        self._last_error = None
        connecting = asyncio.ensure_future(
            self.client.connect(
                settings.nats_url,
                name=f"kiqstack-{name}-{socket.gethostname()}-{os.getpid()}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0,  # _on_error spaces the attempts out
                allow_reconnect=True,
                connect_timeout=5,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {connecting, stopped}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            connecting.cancel()
            raise
        finally:
            stopped.cancel()
        if connecting.done() and not connecting.cancelled():
            connecting.result()  # raises what the client raised
            self.js = self.client.jetstream()
            self._backoff.reset()
            logger.info("connected to NATS at %s", self.urls)
            return True
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(Exception):
            await self.client.close()
        if stop.is_set():
            logger.info("stop requested while waiting for NATS at %s; not starting", self.urls)
            return False
        problem = describe_error(self._last_error) if self._last_error else "no answer"
        raise NatsUnavailableError(urls=self.urls, seconds=limit, problem=problem)

    async def close(self) -> None:
        """Send what is buffered (acks sent last must reach the server), then close."""
        if self.client.is_connected:
            with contextlib.suppress(Exception):
                await self.client.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.client.close()

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's error callback: one line, no traceback; the wait between attempts.

        nats-py calls this after every failed attempt to (re)connect, then tries again at once:
        sleeping here is what spaces the attempts out (capped exponential backoff).
        """
        self._last_error = exc
        client = self.client
        if client.is_connected or client.is_closed:
            logger.log(self.quiet(), "NATS: %s", describe_error(exc))
            return
        delay = self._backoff.next()
        logger.log(
            self.quiet(),
            "cannot reach NATS at %s (%s); next attempt in %.1fs",
            self.urls,
            describe_error(exc),
            delay,
        )
        await asyncio.sleep(delay)

    async def _on_disconnected(self) -> None:
        level = logging.DEBUG if self.client.is_closed else self.quiet()  # closed: by close()
        logger.log(level, "lost the connection to NATS at %s", self.urls)

    async def _on_reconnected(self) -> None:
        self._backoff.reset()
        logger.info("reconnected to NATS at %s", self.urls)
        for callback in self.on_reconnected:
            callback()
