"""What runs inside every worker process: task metrics and logs, probes and ``/metrics``.

``taskiq worker app.tasks.broker:broker ...`` (or ``python -m app worker``) fires the broker's
WORKER_STARTUP event in each worker process; :func:`on_worker_startup` then configures logging,
starts the probe/metrics HTTP server on ``METRICS_PORT`` and polls the queue depth.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult, TaskiqState
from taskiq.exceptions import NoResultError

from app import metrics
from app.broker import KiqBroker
from app.logs import configure_logging
from app.queues import queue_of

logger = logging.getLogger("kiqstack.worker")

QUEUE_DEPTH_INTERVAL_SECONDS = 5.0
_BIND_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _TaskSeries:
    """The metric children of one task name (looked up once, not per task)."""

    received: Counter
    succeeded: Counter
    failed: Counter
    duration: Histogram


class TaskMetricsMiddleware(TaskiqMiddleware):
    """Count, time and log every task a worker runs (worker side only)."""

    def __init__(self) -> None:
        """Create the middleware."""
        super().__init__()
        self._started: dict[str, float] = {}
        self._series: dict[tuple[str, str], _TaskSeries] = {}

    def _of(self, task_name: str, queue: str) -> _TaskSeries:
        series = self._series.get((task_name, queue))
        if series is None:
            series = self._series[task_name, queue] = _TaskSeries(
                received=metrics.TASKS_RECEIVED.labels(task_name, queue),
                succeeded=metrics.TASKS_SUCCEEDED.labels(task_name, queue),
                failed=metrics.TASKS_FAILED.labels(task_name, queue),
                duration=metrics.TASK_DURATION.labels(task_name, queue),
            )
        return series

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Record the start of a task.

        :param message: the task about to run.
        :return: the message, unchanged.
        """
        self._started[message.task_id] = time.perf_counter()
        queue = queue_of(message.labels)
        self._of(message.task_name, queue).received.inc()
        metrics.TASKS_IN_FLIGHT.inc()
        if not logger.isEnabledFor(logging.INFO):  # LOG_LEVEL=WARNING: no record, no extra dict
            return message
        logger.info(
            "task started id=%s name=%s queue=%s",
            message.task_id,
            message.task_name,
            queue,
            extra={
                "task_id": message.task_id,
                "task_name": message.task_name,
                "queue": queue,
                "event": "start",
            },
        )
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Record the end of a task.

        :param message: the task that ran.
        :param result: what it returned or raised.
        """
        started = self._started.pop(message.task_id, None)
        if started is not None:
            duration = time.perf_counter() - started
            # taskiq rounds execution_time to 10 ms (0.0 for short tasks); the result saved next
            # keeps microseconds.
            result.execution_time = round(duration, 6)
        else:
            duration = result.execution_time
        metrics.TASKS_IN_FLIGHT.dec()
        queue = queue_of(message.labels)
        series = self._of(message.task_name, queue)
        series.duration.observe(duration)
        retrying = isinstance(result.error, NoResultError)  # a retry follows (app.lifecycle)
        outcome = "retrying" if retrying else "error" if result.is_err else "success"
        (series.failed if result.is_err else series.succeeded).inc()
        if not logger.isEnabledFor(logging.INFO):
            return
        error = (
            f" error={type(result.error).__name__}: {result.error}"
            if result.is_err and not retrying
            else ""
        )
        logger.info(
            "task finished id=%s name=%s queue=%s duration=%.4fs outcome=%s%s",
            message.task_id,
            message.task_name,
            queue,
            duration,
            outcome,
            error,
            extra={
                "task_id": message.task_id,
                "task_name": message.task_name,
                "queue": queue,
                "duration": round(duration, 6),
                "outcome": outcome,
                "event": "finish",
            },
        )


class ProbeServer:
    """A tiny HTTP/1.1 server for ``/livez``, ``/readyz`` and ``/metrics`` on the worker.

    With several worker processes in one container the first one to bind the port serves it; the
    others retry, so a replacement process takes over if the serving one dies.
    """

    def __init__(self, broker: KiqBroker, host: str, port: int) -> None:
        """Create the server (not started).

        :param broker: the worker's broker, asked for readiness.
        :param host: address to bind.
        :param port: port to bind.
        """
        self.broker = broker
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self._binder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind now, or keep trying in the background while another process holds the port."""
        if not await self._try_bind():
            self._binder = asyncio.create_task(self._bind_loop())

    async def _try_bind(self) -> bool:
        try:
            self.server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
        logger.info("worker probes and metrics on http://%s:%d", self.host, self.port)
        return True

    async def _bind_loop(self) -> None:
        while not await self._try_bind():
            await asyncio.sleep(_BIND_RETRY_SECONDS)

    async def stop(self) -> None:
        """Stop serving."""
        if self._binder is not None:
            self._binder.cancel()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def ready(self) -> tuple[bool, str]:
        """Tell whether this worker can take tasks: NATS and its stream, Redis, listening."""
        if not self.broker.nats_connected:
            return False, "nats disconnected"
        problem = await self.broker.jetstream_problem()
        if problem is not None:
            return False, f"nats: {problem}"
        try:
            await asyncio.wait_for(self.broker.results.ping(), 2)
        except Exception as exc:
            return False, f"redis unreachable: {type(exc).__name__}"
        if not self.broker.is_listening:
            return False, "not consuming"
        return True, "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, body, ctype = await self._route(parts[0] if parts else "", path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[str, bytes, str]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", text
        if path == "/livez":
            return "200 OK", b"ok\n", text
        if path == "/readyz":
            ok, reason = await self.ready()
            return ("200 OK" if ok else "503 Service Unavailable"), f"{reason}\n".encode(), text
        if path == "/metrics":
            body, ctype = metrics.worker_exposition()
            return "200 OK", body, ctype
        return "404 Not Found", b"not found\n", text


async def _poll_queue_depth(broker: KiqBroker) -> None:
    while True:
        try:
            for queue, (pending, ack_pending) in (await broker.queue_depths()).items():
                metrics.QUEUE_PENDING.labels(queue).set(pending)
                metrics.QUEUE_ACK_PENDING.labels(queue).set(ack_pending)
        except Exception as exc:
            logger.debug("queue depth unavailable: %s", exc)
        await asyncio.sleep(QUEUE_DEPTH_INTERVAL_SECONDS)


async def on_worker_startup(state: TaskiqState) -> None:
    """WORKER_STARTUP handler: logging, probe server, queue-depth poller.

    Runs before the broker connects to NATS, so the probes answer while the worker waits for it.

    :param state: taskiq state of this worker process (the broker is stored on it).
    """
    broker: KiqBroker = state.kiqstack_broker
    settings = broker.settings
    configure_logging(settings)
    probes = ProbeServer(broker, settings.host, settings.metrics_port)
    await probes.start()
    state.kiqstack_probes = probes
    for queue in settings.worker_queues:  # one series per served queue from the start
        metrics.QUEUE_PENDING.labels(queue)
        metrics.QUEUE_ACK_PENDING.labels(queue)
    state.kiqstack_poller = asyncio.create_task(_poll_queue_depth(broker))
    logger.info(
        "worker starting: stream=%s queues=%s concurrency=%d per queue ack_wait=%ss max_deliver=%d",
        settings.nats_stream,
        ",".join(settings.worker_queues),
        settings.worker_concurrency,
        settings.ack_wait_seconds,
        settings.max_deliver,
    )


async def on_worker_shutdown(state: TaskiqState) -> None:
    """WORKER_SHUTDOWN handler: stop the poller and the probe server.

    :param state: taskiq state of this worker process.
    """
    poller = getattr(state, "kiqstack_poller", None)
    if poller is not None:
        poller.cancel()
    probes = getattr(state, "kiqstack_probes", None)
    if probes is not None:
        await probes.stop()
