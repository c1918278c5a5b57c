"""The server's metrics port: ``/metrics``, ``/livez`` and ``/readyz`` away from the API port.

``/metrics`` is not served on the API port at all, so an Ingress or a NetworkPolicy for the API
never exposes it, and probes on their own port keep answering while the API port is flooded. The
small HTTP server is the worker's :class:`app.worker.ProbeServer`; ``/readyz`` answers exactly
what the API port's ``/readyz`` answers.

Port: ``METRICS_PORT`` (the worker uses the same variable). With ``RUN_MODE=both`` the worker
keeps ``METRICS_PORT`` and the server takes ``METRICS_PORT + 1``
(:attr:`app.config.Settings.server_metrics_port`).
"""

from __future__ import annotations

import asyncio
import errno
import logging

from app import metrics
from app.api.deps import Kiq
from app.api.health import readyz
from app.config import RunMode
from app.errors import ConfigError
from app.worker import ProbeServer

logger = logging.getLogger("kiqstack.api")


class ServerProbes(ProbeServer):
    """The worker's probe server, answering for the API process."""

    def __init__(self, kiq: Kiq, host: str, port: int) -> None:
        """Create the server (not started).

        :param kiq: the API's context (its readiness is reported).
        :param host: address to bind.
        :param port: port to bind.
        """
        super().__init__(kiq.broker, host, port)
        self.kiq = kiq

    async def start(self) -> None:
        """Bind the port now (one server process per port: no waiting for it to free up).

        :raises ConfigError: when the port is taken.
        """
        try:
            self.server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(
                f"metrics port {self.port} is already in use (METRICS_PORT"
                f"{' + 1 with RUN_MODE=both' if self._beside_worker else ''})"
            ) from None
        note = (
            " (RUN_MODE=both: METRICS_PORT + 1; the worker has METRICS_PORT)"
            if self._beside_worker
            else ""
        )
        logger.info("server probes and metrics on http://%s:%d%s", self.host, self.port, note)

    @property
    def _beside_worker(self) -> bool:
        return self.kiq.settings.run_mode is RunMode.BOTH

    async def _route(self, method: str, path: str) -> tuple[str, bytes, str]:
        if method in ("GET", "HEAD") and path == "/readyz":
            answer = await readyz(self.kiq)
            status = "200 OK" if answer.status_code == 200 else "503 Service Unavailable"
            return status, bytes(answer.body), "application/json"
        if method in ("GET", "HEAD") and path == "/metrics":
            body, content_type = metrics.api_exposition()
            return "200 OK", body, content_type
        return await super()._route(method, path)
