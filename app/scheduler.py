"""The scheduler role: keeps the periodic schedules' definitions in NATS (a reconciler, no ticker).

``RUN_MODE=scheduler`` (``python -m app scheduler``) imports ``TASK_MODULES``, then writes one
definition per declared schedule (:mod:`app.lifecycle.periodic`) **only when it is missing or
differs**, as a compare-and-set on the subject's last sequence, and deletes the definitions of
schedules no longer declared. Afterwards it checks every ``SCHEDULER_INTERVAL_SECONDS`` and
re-creates what is missing (NATS lost its data, someone deleted one). Re-writing an unchanged
definition would restart an ``@every`` interval, so it never does. The NATS server fires the
ticks: several replicas are safe, and ticks go on while no scheduler runs. With ``RUN_MODE=both``
the server process runs it too.

Probes and metrics on ``METRICS_PORT``: ``/livez``, ``/readyz`` (NATS connected and the last
reconciliation done), ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import Mapping

from nats.js.errors import APIError

from app import metrics
from app.broker import KiqBroker
from app.config import Settings
from app.jetstream.topology import task_subject
from app.lifecycle.definitions import PERIODIC, definition_subject
from app.lifecycle.periodic import Schedule, schedules_of
from app.queues import queue_of
from app.retry import describe_error
from app.wire import (
    ERR_WRONG_LAST_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    QUEUE_HEADER,
    SCHEDULE_HEADER,
)
from app.worker import ProbeServer

logger = logging.getLogger("kiqstack.scheduler")


def fingerprint(body: bytes, headers: Mapping[str, str]) -> str:
    """Digest what makes a definition: its body, its ``Kiq-*`` and ``Nats-Schedule*`` headers."""
    digest = hashlib.sha256(body)
    for key in sorted(k for k in headers if k.startswith(("Kiq-", SCHEDULE_HEADER))):
        digest.update(f"\n{key}:{headers[key]}".encode())
    return digest.hexdigest()


class Reconciler:
    """Makes the definitions in NATS match the schedules declared on a broker."""

    def __init__(self, broker: KiqBroker) -> None:
        """Reconcile the schedules of ``broker`` (started by the caller)."""
        self.broker = broker
        #: True once a reconciliation succeeded (``/readyz``).
        self.reconciled = False

    def declared(self) -> dict[str, Schedule]:
        """Return the schedules of the broker's tasks, by definition subject."""
        settings = self.broker.settings
        return {
            definition_subject(settings, PERIODIC, s.name): s
            for s in schedules_of(self.broker).values()
            if self.broker.find_task(s.task_name) is not None
        }

    async def reconcile(self, *, delete: bool) -> int:
        """Write what is missing or different; with ``delete``, remove undeclared schedules.

        :param delete: also delete definitions of schedules no longer declared.
        :return: how many definitions were written or deleted.
        """
        broker = self.broker
        transport = broker.transport
        declared = self.declared()
        metrics.SCHEDULES.set(len(declared))
        changed = 0
        for subject, schedule in declared.items():
            task = broker.find_task(schedule.task_name)
            assert task is not None  # noqa: S101 - filtered by declared()
            body = schedule.body(task.labels)
            queue = queue_of(task.labels)
            headers = schedule.headers(task_subject(broker.settings, queue))
            headers[QUEUE_HEADER] = queue
            last = await transport.last_message(subject)
            if last is not None and fingerprint(last.data, last.headers) == fingerprint(
                body, headers
            ):
                continue
            expected = str(last.sequence if last is not None else 0)
            try:
                await transport.publish(
                    subject, body, {**headers, EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: expected}
                )
            except APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    logger.info("schedule %s: another scheduler wrote it first", schedule.name)
                    continue
                raise
            action = "created" if last is None else "updated"
            metrics.SCHEDULE_WRITES.labels(action).inc()
            logger.info("schedule %s %s: %s", schedule.name, action, schedule.pattern)
            changed += 1
        if delete:
            prefix = definition_subject(broker.settings, PERIODIC, "")
            for subject in await transport.subjects(f"{prefix}>"):
                if subject not in declared:
                    await transport.purge(subject)
                    metrics.SCHEDULE_WRITES.labels("deleted").inc()
                    logger.info("schedule %s deleted (no longer declared)", subject[len(prefix) :])
                    changed += 1
        self.reconciled = True
        return changed

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Reconcile fully now, then re-create missing definitions every ``interval`` seconds."""
        delete = True
        while not stop.is_set():
            try:
                await self.reconcile(delete=delete)
                delete = False
            except Exception as exc:
                metrics.SCHEDULER_ERRORS.inc()
                logger.error("could not reconcile the schedules: %s", describe_error(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


class SchedulerProbes(ProbeServer):
    """``/livez``, ``/readyz`` and ``/metrics`` of the scheduler."""

    def __init__(self, reconciler: Reconciler, host: str, port: int) -> None:
        """Create the server (not started)."""
        super().__init__(reconciler.broker, host, port)
        self.reconciler = reconciler

    async def ready(self) -> tuple[bool, str]:
        """Tell whether the schedules are in place: NATS connected, a reconciliation done."""
        if not self.broker.nats_connected:
            return False, "nats disconnected"
        if not self.reconciler.reconciled:
            return False, "schedules not reconciled yet"
        return True, "ok"

    async def _route(self, method: str, path: str) -> tuple[str, bytes, str]:
        if method in ("GET", "HEAD") and path == "/metrics":
            body, content_type = metrics.scheduler_exposition()
            return "200 OK", body, content_type
        return await super()._route(method, path)


async def serve(settings: Settings, broker: KiqBroker) -> None:
    """Run the scheduler until SIGTERM or SIGINT.

    :param settings: kiqstack settings.
    :param broker: the broker whose tasks declare the schedules (not started).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reconciler = Reconciler(broker)
    probes = SchedulerProbes(reconciler, settings.host, settings.metrics_port)
    await probes.start()
    try:
        await broker.startup()
        logger.info(
            "scheduler started: %d schedule(s), checked every %gs",
            len(reconciler.declared()),
            settings.scheduler_interval_seconds,
        )
        await reconciler.run(settings.scheduler_interval_seconds, stop)
    finally:
        await broker.shutdown()
        await probes.stop()
