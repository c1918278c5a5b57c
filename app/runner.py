"""Start the roles: the API server, the worker, or both in one container."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

import uvicorn
from uvicorn.supervisors import ChangeReload

from app.api.deps import Lifecycle
from app.config import Settings
from app.logs import TEXT_FORMAT, configure_logging

logger = logging.getLogger("kiqstack.runner")

BROKER_REF = "app.tasks.broker:broker"


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
        """Start draining on the first signal; exit on the second or when the delay is over."""
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


def worker_command(settings: Settings) -> list[str]:
    """The ``taskiq worker`` command line for these settings.

    :param settings: kiqstack settings.
    :return: argv.
    """
    argv = [
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        BROKER_REF,
        *settings.task_modules,
        "--workers",
        str(settings.worker_processes),
        "--max-async-tasks",
        str(settings.worker_concurrency),
        "--ack-type",
        "when_saved",
        "--wait-tasks-timeout",
        str(settings.worker_shutdown_timeout),
        "--shutdown-timeout",
        "5",
        "--log-level",
        settings.log_level,
        "--log-format",
        TEXT_FORMAT,
    ]
    if settings.reload:
        argv += ["--reload", "--reload-dir", "app"]
    return argv


def prepare_worker_environment(settings: Settings) -> None:
    """Set up metrics for the worker processes.

    Several processes share one metrics page through a fresh ``PROMETHEUS_MULTIPROC_DIR``. A single
    process keeps its metrics in memory: prometheus-client's multi-process values cost a PID check
    and a file write on every update (about a tenth of a no-op task's CPU).
    """
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if settings.worker_processes > 1:
        directory = tempfile.mkdtemp(prefix="kiqstack-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def run_worker(settings: Settings) -> int:
    """Replace this process with ``taskiq worker`` (exec: SIGTERM reaches it directly).

    :param settings: kiqstack settings.
    :return: never returns on success.
    """
    prepare_worker_environment(settings)
    argv = worker_command(settings)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606 - exec form on purpose
    return 1  # pragma: no cover - execv does not return


def run_both(settings: Settings) -> int:
    """Run the server and the worker as two child processes and supervise them.

    SIGTERM/SIGINT are forwarded to both. If one exits on its own, the other is stopped and this
    process exits non-zero.

    :param settings: kiqstack settings.
    :return: exit code.
    """
    configure_logging(settings)
    base = [sys.executable, "-m", "app"]
    # RUN_MODE=both tells the server that METRICS_PORT is the worker's (it takes METRICS_PORT + 1).
    env = {**os.environ, "RUN_MODE": "both"}
    children = {
        "server": subprocess.Popen([*base, "server"], env=env),  # noqa: S603 - our interpreter
        "worker": subprocess.Popen([*base, "worker"], env=env),  # noqa: S603
    }
    stopping = False

    def forward(sig: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    exit_code = 0
    try:
        while True:
            exited = {name: c.returncode for name, c in children.items() if c.poll() is not None}
            if len(exited) == len(children):
                break
            if exited and not stopping:
                name, code = next(iter(exited.items()))
                logger.error("%s exited with code %s; stopping the other process", name, code)
                exit_code = code or 1
                stopping = True
                for child in children.values():
                    if child.poll() is None:
                        child.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + settings.worker_shutdown_timeout + 15
                while time.monotonic() < deadline and any(
                    c.poll() is None for c in children.values()
                ):
                    time.sleep(0.2)
                for child in children.values():
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
            child.wait()
    if exit_code == 0 and stopping:
        codes = [c.returncode for c in children.values()]
        # A child ended by the forwarded signal counts as a clean stop.
        exit_code = 0 if all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1
    return exit_code
