"""``make run``: kiqstack's API and a worker against local NATS JetStream and Redis.

Starts ``nats-server -js`` and ``redis-server`` on their default ports (4222, 6379) when those are
free, else on free ports, then ``python -m app both``: the API on ``PORT`` (8000), the worker's
metrics and probes on ``METRICS_PORT`` (9000) and the server's on ``METRICS_PORT + 1``, each the
default when free. The NATS and Redis URLs go to ``.kiqstack.env`` (``source`` it in another
terminal when they are not the defaults); once the API and the worker answer ``/readyz``, a summary
says where everything is.

Stopping: Ctrl-C (SIGINT to the terminal's foreground process group), SIGTERM or SIGHUP. The
servers and the app run in sessions of their own, so only this script gets the terminal's signal
and stops them in order: one SIGTERM to the app, SIGKILL to whatever of it is left after its grace
period or on a second Ctrl-C, then Redis and NATS; the env file is removed. Exit status 0 after a
clean stop, 1 when something had to be killed or failed (make, which gets the same Ctrl-C, ends
with 130 either way).
"""

# ruff: noqa: E402 - a Ctrl-C that comes while this script loads is recorded first (below)
from __future__ import annotations

import signal

#: What stops ``make run``: a terminal's Ctrl-C, ``kill``, the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Stop signals received so far (see :class:`StopSignals`).
RECEIVED: list[int] = []
if __name__ == "__main__":
    for _sig in STOP_SIGNALS:
        signal.signal(_sig, lambda sig, _: RECEIVED.append(sig))

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.localinfra import (
    Server,
    die_with_parent,
    free_port,
    nats_server,
    port_is_free,
    processes,
    redis_server,
)

if TYPE_CHECKING:
    from app.config import Settings

ENV_FILE = ROOT / ".kiqstack.env"
DEFAULT_NATS_PORT = 4222
DEFAULT_REDIS_PORT = 6379
DEFAULT_PORT = 8000
DEFAULT_METRICS_PORT = 9000
LOOPBACK = "127.0.0.1"
#: Seconds after which a missing ``/readyz`` answer is reported (the app keeps running).
READY_NOTICE_SECONDS = 90.0


def say(message: str, stream: str = "stderr") -> None:
    """Print a line; a reader that went away (``| tee`` killed by Ctrl-C) is not an error."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    try:
        print(message, file=out, flush=True)
    except OSError:
        # Point the descriptor at /dev/null so that the flush at exit does not fail either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


@dataclass
class StopSignals:
    """Records SIGINT/SIGTERM/SIGHUP; the main loop acts on them (nothing runs in the handler).

    By default the list is :data:`RECEIVED`, which the script's first lines already fill.
    """

    received: list[int] = field(default_factory=lambda: RECEIVED)

    def install(self) -> None:
        """Handle the stop signals from now on."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._record)

    def _record(self, sig: int, _: FrameType | None) -> None:
        self.received.append(sig)

    def __bool__(self) -> bool:
        """Tell whether a signal was received."""
        return bool(self.received)


def choose_port(wanted: int | None, default: int, host: str = LOOPBACK, span: int = 1) -> int:
    """Choose the port: ``wanted`` if given, else ``default`` when free, else a free one.

    :param wanted: a port the user asked for (0: any free port).
    :param default: the conventional port.
    :param host: address the server will bind.
    :param span: how many consecutive ports from the result must be free.
    :return: the port.
    """
    if wanted is not None and wanted != 0:
        return wanted
    if wanted is None and all(port_is_free(default + i, host) for i in range(span)):
        return default
    return free_port(host, span)


def start_server(
    make: Callable[[Path, int], Server], workdir: Path, port: int, default_port: int, fixed: bool
) -> Server:
    """Start a detached server; if its default port got taken meanwhile, use a free one.

    :param make: :func:`nats_server` or :func:`redis_server`.
    :param workdir: its data and log directory.
    :param port: the chosen port.
    :param default_port: the conventional port.
    :param fixed: the user asked for this port (no fallback).
    :return: the running server.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    server = make(workdir, port)
    server.detached = True
    try:
        return server.start()
    except RuntimeError:
        if fixed or port != default_port:
            raise
    server = make(workdir, choose_port(0, default_port))
    server.detached = True
    return server.start()


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in a process group (empty without ``/proc``)."""
    return [p.pid for p in processes().values() if p.pgid == pgid and p.state != "Z"]


def has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether a child exited, without reaping it: its PID, and so its process group, stay ours."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def is_ready(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own http URL
            return bool(response.status == 200)
    except OSError:
        return False


def banner(settings: Settings, nats: Server, redis: Server, env_file: Path) -> str:
    """Build what ``make run`` prints once the API and the worker are ready."""
    api = f"http://{LOOPBACK}:{settings.port}"
    lines = [
        "",
        "kiqstack is ready (Ctrl-C stops everything):",
        f"  API      {api}  (docs: {api}/docs)",
        f"  metrics  worker http://{LOOPBACK}:{settings.metrics_port}/metrics, "
        f"server http://{LOOPBACK}:{settings.server_metrics_port}/metrics",
        f"  NATS     nats://{nats.host}:{nats.port} (JetStream)",
        f"  Redis    redis://{redis.host}:{redis.port}/0",
        "Try, in another terminal:",
        f"  curl -s -X POST '{api}/tasks/app.tasks.example:add?wait=5' "
        "-H 'Content-Type: application/json' -d '{\"args\": [2, 3]}'",
    ]
    defaults = nats.port == DEFAULT_NATS_PORT and redis.port == DEFAULT_REDIS_PORT
    where = shlex.quote(
        str(env_file.relative_to(ROOT) if env_file.is_relative_to(ROOT) else env_file)
    )
    if defaults:
        lines.append(
            "  source .venv/bin/activate   # then python -m app dlq list, taskiq worker ..."
        )
    else:
        lines += [
            "  source .venv/bin/activate",
            f"  source {where}   # NATS and Redis are not on their default ports",
        ]
    return "\n".join([*lines, ""])


def write_env_file(path: Path, nats: Server, redis: Server) -> str:
    """Write the URLs other terminals need; return the text (to remove only our own file)."""
    text = (
        f"# Written by `make run` (pid {os.getpid()}); removed when it stops.\n"
        f"# `source {path.name}` in another terminal to reach its NATS and Redis.\n"
        f"export NATS_URL={shlex.quote(f'nats://{nats.host}:{nats.port}')}\n"
        f"export REDIS_URL={shlex.quote(f'redis://{redis.host}:{redis.port}/0')}\n"
    )
    path.write_text(text)
    return text


def remove_env_file(path: Path, text: str) -> None:
    """Remove the env file if it is still the one we wrote."""
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            path.unlink()


def kill_group(pgid: int) -> list[int]:
    """SIGKILL a process group and wait (bounded) until its members are gone.

    :return: the PIDs that were still running.
    """
    members = group_members(pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def supervise(
    app: subprocess.Popen[bytes],
    stop: StopSignals,
    settings: Settings,
    ready: Callable[[], None],
    grace: float,
) -> int:
    """Run until the app exits or a stop signal; then stop the app (and only the app).

    :param app: ``python -m app both``, leader of its own process group.
    :param stop: the stop signals received so far.
    :param settings: the app's settings (probe ports).
    :param ready: called once, when the API and the worker answer ``/readyz``.
    :param grace: seconds the app gets to stop before it is killed.
    :return: exit status.
    """
    probes = [
        f"http://{LOOPBACK}:{settings.port}/readyz",
        f"http://{LOOPBACK}:{settings.metrics_port}/readyz",
    ]
    started = time.monotonic()
    next_probe = started
    announced = noticed = killed = False
    stop_deadline: float | None = None
    while not has_exited(app):
        now = time.monotonic()
        if stop and stop_deadline is None:
            name = signal.Signals(stop.received[0]).name
            say(f"kiqstack: {name}: stopping the API and the worker (Ctrl-C again to kill them)")
            os.kill(app.pid, signal.SIGTERM)
            stop_deadline = now + grace
        overdue = stop_deadline is not None and now > stop_deadline
        if not killed and (len(stop.received) > 1 or overdue):
            why = "second signal" if len(stop.received) > 1 else f"not stopped after {grace:.0f}s"
            say(f"kiqstack: {why}: killing the API and the worker")
            kill_group(app.pid)
            killed = True
        if not announced and stop_deadline is None and now >= next_probe:
            if all(is_ready(url) for url in probes):
                ready()
                announced = True
            elif not noticed and now - started > READY_NOTICE_SECONDS:
                say(f"kiqstack: not ready after {READY_NOTICE_SECONDS:.0f}s (see the logs above)")
                noticed = True
            next_probe = now + 0.5
        time.sleep(0.05)
    # The app exited but is not reaped yet: its process group cannot be reused, so whatever is
    # left in it (a worker process whose parent died first) is ours to kill.
    leftovers = kill_group(app.pid)
    code = app.wait()
    if leftovers:
        say(f"kiqstack: killed processes the app left behind: {leftovers}")
    if not stop:
        say(f"kiqstack: the app exited with status {code}; stopping NATS and Redis")
        return code or 1
    return 1 if killed or leftovers or code != 0 else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options of ``make run`` (``make run RUN_ARGS="..."``)."""
    parser = argparse.ArgumentParser(
        prog="scripts/run_local.py",
        description="Run the API and a worker with local NATS JetStream and Redis (what `make "
        "run` does; pass options with make run RUN_ARGS='--nats-port 4223'). The API and metrics "
        "ports come from PORT and METRICS_PORT (default 8000 and 9000, or free ports when those "
        "are taken). Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--nats-port", type=int, help="NATS port (default 4222, or a free one; 0: a free one)"
    )
    parser.add_argument(
        "--redis-port", type=int, help="Redis port (default 6379, or a free one; 0: a free one)"
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=ENV_FILE,
        help="where to write NATS_URL and REDIS_URL (default: .kiqstack.env in the checkout)",
    )
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[int, int]:
    """Choose the ports and set the app's environment (inherited by the app).

    :return: the NATS and Redis ports.
    """
    host = os.environ.setdefault("HOST", LOOPBACK)
    # The address the app binds: an IPv6 or empty HOST is checked as the IPv4 wildcard.
    bind_host = host if host and ":" not in host else "0.0.0.0"

    def pick(what: str, wanted: int | None, default: int, bind: str, span: int = 1) -> int:
        port = choose_port(wanted, default, bind, span)
        if wanted is None and port != default:
            taken = " or ".join(str(default + i) for i in range(span))
            gets = " and ".join(str(port + i) for i in range(span))
            say(f"kiqstack: port {taken} is taken: {what} on {gets}")
        return port

    nats_port = pick("NATS", args.nats_port, DEFAULT_NATS_PORT, LOOPBACK)
    redis_port = pick("Redis", args.redis_port, DEFAULT_REDIS_PORT, LOOPBACK)
    if not os.environ.get("PORT"):
        os.environ["PORT"] = str(pick("the API", None, DEFAULT_PORT, bind_host))
    if not os.environ.get("METRICS_PORT"):
        port = pick("metrics (worker, server)", None, DEFAULT_METRICS_PORT, bind_host, span=2)
        os.environ["METRICS_PORT"] = str(port)
    for name in ("NATS_URL_FILE", "REDIS_URL_FILE"):
        os.environ.pop(name, None)
    os.environ["RUN_MODE"] = "both"
    # No load balancer to drain from locally, and JetStream's data lives only as long as this
    # run: Ctrl-C stops without waiting long for running tasks.
    os.environ.setdefault("SHUTDOWN_DELAY_SECONDS", "0")
    os.environ.setdefault("WORKER_SHUTDOWN_TIMEOUT", "5")
    os.environ.setdefault("WORKER_QUEUES", "default,cpu")  # cpu_burn is on the cpu queue
    set_urls(nats_port, redis_port)
    return nats_port, redis_port


def set_urls(nats_port: int, redis_port: int) -> None:
    """Point the app at the local servers."""
    os.environ["NATS_URL"] = f"nats://{LOOPBACK}:{nats_port}"
    os.environ["REDIS_URL"] = f"redis://{LOOPBACK}:{redis_port}/0"


def main(argv: list[str] | None = None) -> int:
    """Run until interrupted; see the module docstring."""
    stop = StopSignals()
    stop.install()
    # Imported only now, so that a Ctrl-C while they load is handled like any other.
    from app.config import load_settings
    from app.errors import ConfigError
    from app.runner import stop_grace

    args = parse_args(argv)
    nats_port, redis_port = configure(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        say(f"kiqstack: {exc.detail}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="kiqstack-run-"))
    servers: list[Server] = []
    env_text = ""
    try:
        say(f"kiqstack: starting NATS on :{nats_port} and Redis on :{redis_port} ({workdir})")
        nats = start_server(
            nats_server, workdir / "nats", nats_port, DEFAULT_NATS_PORT, bool(args.nats_port)
        )
        servers.append(nats)
        if stop:
            return 0
        redis = start_server(
            redis_server, workdir / "redis", redis_port, DEFAULT_REDIS_PORT, bool(args.redis_port)
        )
        servers.append(redis)
        if stop:
            return 0
        set_urls(nats.port, redis.port)
        settings = load_settings()
        env_text = write_env_file(args.env_file, nats, redis)
        say(f"kiqstack: starting the API on :{settings.port} and a worker (python -m app both)")
        app = subprocess.Popen(
            [sys.executable, "-m", "app", "both"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        code = supervise(
            app,
            stop,
            settings,
            lambda: say(banner(settings, nats, redis, args.env_file), "stdout"),
            stop_grace(settings) + 10,
        )
    except (RuntimeError, FileNotFoundError) as exc:
        say(f"kiqstack: {exc}")
        return 1
    finally:
        if env_text:
            remove_env_file(args.env_file, env_text)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        say("kiqstack: stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
