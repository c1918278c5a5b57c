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
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.supervisors import ChangeReload

from app.config import Settings
from app.logs import TEXT_FORMAT, configure_logging

if TYPE_CHECKING:
    from taskiq.cli.worker.args import WorkerArgs

    from app.api.deps import Lifecycle

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


def run_scheduler(settings: Settings) -> int:
    """Run the scheduler role (:mod:`app.scheduler`) until SIGTERM.

    :param settings: kiqstack settings.
    :return: exit code (1 when it could not start, e.g. NATS unreachable in time).
    """
    configure_logging(settings)
    from app.errors import AppError
    from app.main import import_task_modules
    from app.scheduler import serve
    from app.tasks.broker import broker

    broker.configure(settings)
    import_task_modules(settings)
    try:
        asyncio.run(serve(settings, broker))
    except AppError as exc:
        logger.critical("scheduler stopped: %s", exc.detail)
        return 1
    return 0


def worker_command(settings: Settings) -> list[str]:
    """Build the ``taskiq worker`` command line equivalent to ``python -m app worker``.

    :param settings: kiqstack settings.
    :return: argv.
    """
    return [sys.executable, "-m", "taskiq", "worker", *worker_arguments(settings)]


def worker_arguments(settings: Settings) -> list[str]:
    """Build the arguments of ``taskiq worker`` for these settings.

    :param settings: kiqstack settings.
    :return: the arguments after ``taskiq worker``.
    """
    argv = [
        BROKER_REF,
        *settings.task_modules,
        "--workers",
        str(settings.worker_processes),
        "--max-async-tasks",
        str(settings.worker_slots),  # WORKER_CONCURRENCY per queue served
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
    """Run ``taskiq worker`` in this process: it supervises the worker processes it forks.

    This process is the one the container runtime signals (no shell, no exec needed): SIGTERM
    drains the worker processes. Logging is set up here first (``LOG_FORMAT``), so taskiq's own
    process manager and every worker process log in the same format. Nothing here may import
    prometheus-client before :func:`prepare_worker_environment`: the worker processes inherit
    the choice of in-memory or multi-process metrics made at its import.

    :param settings: kiqstack settings.
    :return: exit code.
    """
    prepare_worker_environment(settings)
    configure_logging(settings)
    from taskiq.cli.worker.args import WorkerArgs

    args = WorkerArgs.from_cli(worker_arguments(settings))
    args.configure_logging = False
    return serve_worker(args)


def serve_worker(args: WorkerArgs) -> int:
    """Run taskiq's ``run_worker``, with worker processes that fail with a log record, not stderr.

    :param args: parsed ``taskiq worker`` arguments.
    :return: exit code (0 after a clean stop).
    """
    from taskiq.cli.worker.process_manager import ProcessManager

    logging.getLogger("taskiq").setLevel(args.log_level)
    logger.info("worker supervisor pid %d, %d worker process(es)", os.getpid(), args.workers)
    observer = None
    if args.reload:
        from watchdog.observers import Observer

        observer = Observer()
        observer.start()
        args.workers = 1
    manager = ProcessManager(args=args, observer=observer, worker_function=_worker_process)
    status = manager.start()
    if observer is not None and observer.is_alive():
        observer.stop()
    return 0 if status is None else 1


def _worker_process(args: WorkerArgs) -> None:
    """Body of one worker process: taskiq's ``start_listen``; a crash is logged, then exit 1."""
    from taskiq.cli.worker.run import start_listen

    try:
        start_listen(args)
    except KeyboardInterrupt:
        logger.warning("worker process %d stopped by repeated signals", os.getpid())
        raise SystemExit(1) from None
    except Exception as exc:
        logger.critical("worker process %d failed: %s", os.getpid(), exc, exc_info=True)
        raise SystemExit(1) from None


#: Signals that stop ``RUN_MODE=both``. Each is forwarded to the children as SIGTERM: the same
#: graceful stop for all (taskiq's process manager takes SIGHUP as "reload", not "stop").
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_grace(settings: Settings) -> float:
    """Seconds the children of ``both`` get to stop before they are killed.

    The worker waits up to ``WORKER_SHUTDOWN_TIMEOUT`` for running tasks and 5 s for the broker;
    the server drains for ``SHUTDOWN_DELAY_SECONDS``, then closes within its graceful timeout.
    """
    server = 2 * settings.shutdown_delay_seconds + 5
    return max(settings.worker_shutdown_timeout, server) + 15


def run_both(settings: Settings) -> int:
    """Run the server and the worker as two child processes and supervise them.

    SIGTERM, SIGINT and SIGHUP stop both (forwarded as SIGTERM, once per signal received); a child
    still running :func:`stop_grace` seconds later is killed. If one exits on its own, the other
    is stopped the same way and this process exits non-zero.

    :param settings: kiqstack settings.
    :return: exit code: 0 after a clean stop on a signal.
    """
    configure_logging(settings)
    received: list[int] = []
    # Handlers first: a signal that comes while the children start must not kill only this
    # process (which would orphan them). The handler only records it; the loop below acts.
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda sig, _: received.append(sig))
    base = [sys.executable, "-m", "app"]
    # RUN_MODE=both tells the server that METRICS_PORT is the worker's (it takes METRICS_PORT + 1).
    env = {**os.environ, "RUN_MODE": "both"}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role in ("server", "worker"):
            children[role] = subprocess.Popen([*base, role], env=env)  # noqa: S603 - our python
        return _supervise(children, received, stop_grace(settings))
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
            child.wait()


def _supervise(
    children: dict[str, subprocess.Popen[bytes]], received: list[int], grace: float
) -> int:
    """Wait for the children; stop them all on a signal or when one exits.

    :param children: the running children by role.
    :param received: stop signals recorded by the handlers (appended to while this runs).
    :param grace: seconds between asking the children to stop and killing them.
    :return: exit code.
    """
    handled = 0
    stop_deadline: float | None = None
    exit_code = 0

    def stop_all() -> None:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    while any(child.poll() is None for child in children.values()):
        if len(received) > handled:
            if stop_deadline is None:
                name = signal.Signals(received[handled]).name
                logger.info("%s: stopping server and worker (at most %.0fs)", name, grace)
                stop_deadline = time.monotonic() + grace
            handled = len(received)
            stop_all()
        elif stop_deadline is None:
            exited = [(name, c.returncode) for name, c in children.items() if c.poll() is not None]
            if exited:
                name, code = exited[0]
                logger.error("%s exited with code %s; stopping the other process", name, code)
                exit_code = code or 1
                stop_deadline = time.monotonic() + grace
                stop_all()
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            for name, child in children.items():
                if child.poll() is None:
                    logger.error("%s still running %.0fs after SIGTERM: killing it", name, grace)
                    child.kill()
            exit_code = exit_code or 1
            break
        time.sleep(0.1)
    for child in children.values():
        child.wait()
    if exit_code == 0 and received:
        # A child ended by the forwarded signal counts as a clean stop.
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        exit_code = 0 if all(c.returncode in clean for c in children.values()) else 1
    return exit_code
