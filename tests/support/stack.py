"""Run kiqstack roles as real OS processes for tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scripts.localinfra import Process, free_port

T = TypeVar("T")


def free_port_pair(host: str = "127.0.0.1") -> int:
    """Return a port ``p`` with ``p`` and ``p + 1`` free, below the ephemeral port range.

    ``RUN_MODE=both`` serves the server's probes on ``METRICS_PORT + 1``. A port from ``bind(0)``
    (:func:`free_port`) is odd and inside the ephemeral range, and Linux gives outgoing connections
    (the worker's, to NATS and Redis) even ports of that range first: its neighbour was often taken
    before the server could bind it. Ports below the range are never handed out that way.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = max(1024, low - 12000)
    for _ in range(100):
        port = first + secrets.randbelow(low - 1 - first)
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + 1):
                    sock = stack.enter_context(socket.socket())
                    sock.bind((host, candidate))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no two adjacent free ports below {low}")


def unique_names(tag: str = "t") -> dict[str, str]:
    """Stream, subject, consumer and key names no other test uses."""
    suffix = f"{tag}_{uuid.uuid4().hex[:10]}"
    return {
        "NATS_STREAM": f"kq_{suffix}",
        "NATS_SUBJECT": f"kq.{suffix}.tasks",
        "NATS_CONSUMER": f"kqw_{suffix}",
        "NATS_SCHEDULE_SUBJECT": f"kq.{suffix}.schedules",
        "NATS_DEAD_LETTER_STREAM": f"kqdl_{suffix}",
        "NATS_DEAD_LETTER_SUBJECT": f"kq.{suffix}.dead",
        "RESULT_KEY_PREFIX": f"kq:{suffix}",
    }


class Role(Process):
    """One ``python -m app <role>`` process, in a session of its own."""

    def __init__(
        self,
        role: str,
        env: dict[str, str],
        log_path: Path,
        port: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        super().__init__([sys.executable, "-m", "app", role], log_path, env=env, session=True)
        self.role = role
        self.port = port
        self.metrics_port = metrics_port

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> Role:
        """Start the process; wait until its probe port answers ``/readyz``."""
        self.spawn()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    @property
    def probe_url(self) -> str:
        """Base URL of the port whose ``/readyz`` tells this role is ready."""
        port = self.port if self.role in ("server", "both") else self.metrics_port
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for ``/readyz`` to answer 200 (and for the worker port too in ``both``)."""
        urls = [self.probe_url]
        if self.role == "both":
            urls.append(f"http://127.0.0.1:{self.metrics_port}")
        deadline = time.monotonic() + timeout
        for url in urls:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.role} exited early:\n{self.logs()}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.role} not ready after {timeout}s:\n{self.logs()}")
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the process and its children, politely then firmly."""
        super().stop(sig, timeout)

    def metrics(self) -> str:
        """The worker's ``/metrics`` page."""
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


class Stack:
    """Starts roles sharing one set of settings; stops them all on :meth:`close`."""

    def __init__(self, base_env: dict[str, Any], logdir: Path) -> None:
        """Create a stack.

        :param base_env: settings shared by the roles (environment variable names).
        :param logdir: where process logs go.
        """
        self.base_env = {key: str(value) for key, value in base_env.items()}
        self.logdir = logdir
        self.roles: list[Role] = []

    def role(self, role: str, start: bool = True, **overrides: Any) -> Role:
        """Create (and by default start) a role process."""
        env = {
            **os.environ,
            "PORT": str(free_port()),
            "METRICS_PORT": str(free_port_pair() if role == "both" else free_port()),
            "HOST": "127.0.0.1",
            "SHUTDOWN_DELAY_SECONDS": "0",
            **self.base_env,
            **{key: str(value) for key, value in overrides.items()},
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        item = Role(
            role=role,
            env=env,
            log_path=self.logdir / f"{role}-{len(self.roles)}.log",
            port=int(env["PORT"]),
            metrics_port=int(env["METRICS_PORT"]),
        )
        self.roles.append(item)
        if start:
            item.start()
        return item

    def close(self) -> None:
        """Stop every role."""
        for item in self.roles:
            item.stop()

    def dump_logs(self) -> str:
        """All logs, for a failing test's report."""
        return "\n".join(f"===== {r.role} ({r.log_path.name})\n{r.logs()}" for r in self.roles)


def poll(check: Callable[[], T | None], timeout: float, describe: Callable[[], str]) -> T:
    """Call ``check`` until it returns something other than None; fail after ``timeout`` seconds.

    A deadline for waiting on an event (a log line, a result), not a speed assertion.
    """
    give_up = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= give_up:
            raise AssertionError(f"gave up after {timeout}s: {describe()}")
        time.sleep(0.05)


def metric_value(page: str, name: str, **labels: str) -> float:
    """Sum the samples called ``name`` on a Prometheus text page whose labels include ``labels``.

    :raises KeyError: when no such sample is on the page.
    """
    found = [
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    if not found:
        raise KeyError(f"{name}{labels} not on the page")
    return float(sum(found))


def dispatch(base: str, task: str, *args: Any, wait: float | None = None) -> httpx.Response:
    """``POST /tasks/{task}`` with positional arguments (``?wait=`` when given)."""
    params = {"wait": wait} if wait else None
    return httpx.post(f"{base}/tasks/{task}", json={"args": list(args)}, params=params, timeout=90)


def result_of(
    base: str, task_id: str, timeout: float = 60, redis_restarts: bool = False
) -> dict[str, Any]:
    """Wait (up to ``timeout``) until the API reports the task finished; return its status.

    :param redis_restarts: 404 and 503 mean "not yet" (Redis down or restarted empty), as for a
        task not dispatched through the API.
    """

    def finished() -> dict[str, Any] | None:
        response = httpx.get(f"{base}/tasks/{task_id}", timeout=5)
        if redis_restarts and response.status_code in (404, 503):
            # Redis down: the API says so (503); restarted empty: the dispatch record is gone
            # (404) until the redelivered task stores its result.
            return None
        body: dict[str, Any] = response.json()
        return body if body["status"] in ("success", "error", "cancelled") else None

    return poll(finished, timeout, lambda: f"task {task_id} still unfinished")


def wait_for_log(role: Role, text: str, timeout: float = 30) -> None:
    """Wait (up to ``timeout``) until ``text`` appears in a role's log."""
    poll(
        lambda: True if text in role.logs() else None,
        timeout,
        lambda: f"{text!r} not logged:\n{role.logs()}",
    )
