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
from typing import TYPE_CHECKING

from app.config import Settings
from app.logs import TEXT_FORMAT, configure_logging

if TYPE_CHECKING:
    from taskiq.cli.worker.args import WorkerArgs

logger = logging.getLogger("kiqstack.runner")

BROKER_REF = "app.tasks.broker:broker"


def run_server(settings: Settings) -> int:
    """Serve the API with uvicorn until SIGTERM (:func:`app.serving.run_server`).

    uvicorn and the API are imported here, not at the top: a worker never loads them.

    :param settings: kiqstack settings.
    :return: exit code.
    """
    from app.serving import run_server as serve

    return serve(settings)


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
    return serve_worker(worker_args(settings))


def worker_args(settings: Settings) -> WorkerArgs:
    """Parse :func:`worker_arguments` with taskiq, keeping the web stack out of the worker.

    FastAPI, Starlette, uvicorn and aiohttp are not imported (:mod:`app.lean_imports`): the worker
    processes fork from this process and load only what running tasks needs.

    :param settings: kiqstack settings.
    :return: taskiq's worker arguments.
    """
    from app.lean_imports import keep_web_stack_out

    keep_web_stack_out()  # before taskiq is imported
    from taskiq.cli.worker.args import WorkerArgs

    args = WorkerArgs.from_cli(worker_arguments(settings))
    args.configure_logging = False
    return args


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
