"""The server role: uvicorn serving the API, draining on SIGTERM.

Only the server role imports this module (and with it uvicorn, FastAPI and the API); a worker
process never does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.supervisors import ChangeReload

from app.config import Settings
from app.logs import configure_logging

if TYPE_CHECKING:
    from app.api.deps import Lifecycle

logger = logging.getLogger("kiqstack.runner")


class DrainingServer(uvicorn.Server):
    """uvicorn server that turns ``/readyz`` to 503 on SIGTERM and closes only after a delay.

    The delay lets Kubernetes take the pod out of its Service endpoints before connections are
    refused (podinfo's shutdown order). A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, delay: float) -> None:
        """Create the server.

        :param config: uvicorn config.
        :param lifecycle: draining state shared with the app.
        :param delay: seconds between SIGTERM and closing.
        """
        super().__init__(config)
        self.lifecycle = lifecycle
        self.delay = delay

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining on the first signal; exit on the second or when the delay is over.

        Before startup is over (NATS not answering yet) there is nothing to drain: stop at once.
        """
        if not self.started:
            self.should_exit = True
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            loop.call_soon_threadsafe(self.lifecycle.stop_requested.set)
            return
        if self.lifecycle.draining or self.delay <= 0:
            self.should_exit = True
            if self.lifecycle.draining and sig == signal.SIGINT:
                self.force_exit = True
            return
        self.lifecycle.draining = True
        logger.info(
            "signal %s: /readyz answers 503, closing in %.1fs", signal.Signals(sig).name, self.delay
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.should_exit = True
            return
        loop.call_soon_threadsafe(loop.call_later, self.delay, self._finish)

    def _finish(self) -> None:
        self.should_exit = True


def run_server(settings: Settings) -> int:
    """Serve the API with uvicorn until SIGTERM.

    The API is on ``PORT`` with the limits of :mod:`app.http_protocol`; ``/metrics``, ``/livez``
    and ``/readyz`` are on :attr:`Settings.server_metrics_port` (``METRICS_PORT``, or
    ``METRICS_PORT + 1`` with ``RUN_MODE=both``).

    :param settings: kiqstack settings.
    :return: exit code.
    """
    configure_logging(settings)
    from app.http_protocol import edge_config

    if settings.reload:
        # uvicorn.run(reload=True) with kiqstack's config: the reloader re-imports the factory.
        config = edge_config(
            settings, "app.main:app_factory", factory=True, reload=True, reload_dirs=["app"]
        )
        sock = config.bind_socket()
        ChangeReload(config, target=uvicorn.Server(config).run, sockets=[sock]).run()
        return 0
    from app.api.deps import Lifecycle
    from app.main import create_app

    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle, metrics_port=settings.server_metrics_port)
    config = edge_config(
        settings,
        app,
        timeout_graceful_shutdown=max(5, int(settings.shutdown_delay_seconds) + 5),
    )
    server = DrainingServer(config, lifecycle, settings.shutdown_delay_seconds)
    server.run()
    return 0 if server.started else 1
