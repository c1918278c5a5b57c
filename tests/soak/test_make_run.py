"""``make run`` stops everything it started on Ctrl-C, every time.

Each case runs the real ``make run`` (real nats-server, redis-server, ``python -m app both`` with
its server, taskiq process manager and worker process) as the foreground job of a pseudo-terminal
of its own, waits until a task round-trips through the API, then stops it the way a user does:
Ctrl-C typed on the terminal (the kernel sends SIGINT to the whole foreground process group), also
with ``| tee``, twice in a row, during startup, with a task running, or SIGTERM to make. Then every
process ``make run`` started must be gone and every port free. The bug this guards against
(issue 10: an orphaned worker holding port 9000) was intermittent, so cases repeat.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.localinfra import free_port, port_is_free, processes

pytestmark = pytest.mark.soak

ROOT = Path(__file__).resolve().parents[2]
#: How many times each case runs (the soak's longer variant raises it).
REPEAT = int(os.environ.get("KIQSTACK_SOAK_REPEAT", "1"))
CTRL_C = b"\x03"


def _take_terminal() -> None:
    """``preexec_fn``: make the pty (stdin) the controlling terminal of the new session."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _descendants(root: int) -> dict[int, str]:
    """The live processes below ``root`` (any session or group): pid -> command line."""
    table = processes()
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid].cmdline
        todo.extend(children.get(pid, []))
    return out


def _alive(pids: dict[int, str]) -> dict[int, str]:
    """Those of ``pids`` still running (a zombie holds no port and runs nothing)."""
    table = processes()
    return {pid: cmd for pid, cmd in pids.items() if pid in table and table[pid].state != "Z"}


def _wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


@dataclass
class MakeRun:
    """``make run`` as the foreground job of a pty: what a user gets in a terminal."""

    tmp: Path
    pipe_to_tee: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started: dict[int, str] = field(default_factory=dict)
    _master: int = -1
    _output: bytearray = field(default_factory=bytearray)
    _reader: threading.Thread | None = None

    def start(self) -> MakeRun:
        """Start ``make run`` on free ports, with its env file in the test's directory."""
        metrics = free_port(span=2)
        self.ports = {
            "api": free_port(),
            "worker metrics": metrics,
            "server metrics": metrics + 1,
            "nats": free_port(),
            "redis": free_port(),
        }
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "NATS_URL", "REDIS_URL")
        }
        env.update(
            PORT=str(self.ports["api"]),
            METRICS_PORT=str(self.ports["worker metrics"]),
            TERM="dumb",
        )
        run_args = (
            f"RUN_ARGS=--nats-port {self.ports['nats']} --redis-port {self.ports['redis']} "
            f"--env-file {self.tmp / 'kiqstack.env'}"
        )
        if self.pipe_to_tee:
            argv = ["bash", "-c", f"make run '{run_args}' | tee {self.tmp / 'tee.log'}"]
        else:
            argv = ["make", "run", run_args]
        master, slave = pty.openpty()
        self._master = master
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        # Drain the terminal, or the processes writing to it would block on a full buffer.
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._output.extend(chunk)

    @property
    def output(self) -> str:
        """Everything written to the terminal so far."""
        return self._output.decode(errors="replace")

    @property
    def api(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.ports['api']}"

    def snapshot(self) -> dict[int, str]:
        """Record every process below ``make`` now (they must all be gone at the end)."""
        assert self.process is not None
        self.started.update(_descendants(self.process.pid))
        return self.started

    def dispatch(self, task: str, *args: object, wait: int = 0) -> dict[str, object]:
        """POST a task; with ``wait`` return its result."""
        url = f"{self.api}/tasks/{task}" + (f"?wait={wait}" if wait else "")
        body = json.dumps({"args": list(args)}).encode()
        request = urllib.request.Request(  # noqa: S310 - our own http URL
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=wait + 10) as answer:  # noqa: S310
            result: dict[str, object] = json.loads(answer.read())
            return result

    def wait_for_round_trip(self, timeout: float = 180) -> None:
        """Wait until ``add(2, 3)`` comes back as 5 through the API."""
        assert self.process is not None

        def answered() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"make run exited early:\n{self.output}")
            with contextlib.suppress(OSError, ValueError):
                return self.dispatch("app.tasks.example:add", 2, 3, wait=5).get("result") == 5
            return False

        assert _wait_until(answered, timeout, step=0.5), f"no round trip:\n{self.output}"

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        """Wait until ``text`` appears on the terminal."""
        assert _wait_until(lambda: text in self.output, timeout), f"no {text!r}:\n{self.output}"

    def wait_for_process(self, pattern: str, timeout: float = 180) -> None:
        """Wait until a process whose command line matches ``pattern`` runs below make."""

        def seen() -> bool:
            return any(re.search(pattern, cmd) for cmd in self.snapshot().values())

        assert _wait_until(seen, timeout, step=0.05), f"no {pattern!r}:\n{self.output}"

    def env_file(self) -> dict[str, str]:
        """The variables ``make run`` exported for other terminals (``source`` the file)."""
        script = f"set -e; source {self.tmp / 'kiqstack.env'}; env -0"
        out = subprocess.run(
            ["bash", "-c", script], env={}, capture_output=True, check=True
        ).stdout.decode()
        pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
        return {key: value for key, value in pairs if key in ("NATS_URL", "REDIS_URL")}

    def ctrl_c(self) -> None:
        """Type Ctrl-C on the terminal."""
        os.write(self._master, CTRL_C)

    def wait(self, timeout: float = 90) -> int:
        """Wait for the foreground job to end; return its status."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"make run still running {timeout}s after the stop:\n{self.output}"
            ) from None

    def assert_all_stopped(self) -> None:
        """Every process ever seen below make is gone and every port is free."""
        left = self.started
        _wait_until(lambda: not _alive(left), timeout=30)
        assert not _alive(left), f"left running: {_alive(left)}\n{self.output}"
        busy = [name for name, port in self.ports.items() if not port_is_free(port)]
        assert not busy, f"ports still taken: {busy}\n{self.output}"
        if "kiqstack: starting" in self.output:  # the script got as far as starting something
            assert "kiqstack: stopped" in self.output, self.output
        assert not (self.tmp / "kiqstack.env").exists()

    def close(self) -> None:
        """Kill whatever a failed case left behind (only processes this case started)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for pid in _alive(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        if self._reader is not None:
            self._reader.join(5)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., MakeRun]]:
    """Start ``make run`` cases; whatever they leave is killed at the end."""
    runs: list[MakeRun] = []

    def start(pipe_to_tee: bool = False) -> MakeRun:
        workdir = tmp_path / f"run{len(runs)}"
        workdir.mkdir()
        run = MakeRun(workdir, pipe_to_tee=pipe_to_tee)
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        run.close()


def _assert_started_everything(run: MakeRun) -> None:
    """The snapshot holds the whole stack, so the checks that follow are about something."""
    commands = list(run.snapshot().values())

    def has(pattern: str) -> bool:
        return any(re.search(pattern, cmd) for cmd in commands)

    for pattern in (
        r"nats-server .*-js",
        r"(redis|valkey)-server",
        r"scripts/run_local\.py",
        r"-m app both",
        r"-m app server",
        r"-m taskiq worker",
    ):
        assert has(pattern), f"{pattern!r} not among {commands}"
    workers = [cmd for cmd in commands if "-m taskiq worker" in cmd]
    assert len(workers) >= 2, f"expected the taskiq process manager and a worker: {workers}"


INTERRUPTED = (0, 130, -signal.SIGINT)


@pytest.mark.parametrize("pipe_to_tee", [False, True], ids=["terminal", "piped-to-tee"])
def test_ctrl_c_stops_everything(make_run: Callable[..., MakeRun], pipe_to_tee: bool) -> None:
    for _ in range(REPEAT * (3 if not pipe_to_tee else 2)):
        run = make_run(pipe_to_tee=pipe_to_tee)
        run.wait_for_round_trip()
        _assert_started_everything(run)
        run.wait_for_output("kiqstack is ready")
        assert run.api in run.output
        assert run.env_file() == {
            "NATS_URL": f"nats://127.0.0.1:{run.ports['nats']}",
            "REDIS_URL": f"redis://127.0.0.1:{run.ports['redis']}/0",
        }
        run.ctrl_c()
        assert run.wait() in INTERRUPTED
        run.assert_all_stopped()
        if pipe_to_tee:
            assert "kiqstack is ready" in (run.tmp / "tee.log").read_text()


def test_ctrl_c_twice_stops_everything(make_run: Callable[..., MakeRun]) -> None:
    for _ in range(REPEAT):
        run = make_run()
        run.wait_for_round_trip()
        _assert_started_everything(run)
        run.ctrl_c()
        run.ctrl_c()
        assert run.wait() in INTERRUPTED
        run.assert_all_stopped()


@pytest.mark.parametrize(
    "started",
    [r"scripts/run_local\.py", "nats-server", "(redis|valkey)-server", "-m app both", "-m taskiq"],
)
def test_ctrl_c_during_startup_stops_everything(
    make_run: Callable[..., MakeRun], started: str
) -> None:
    """Ctrl-C as soon as ``started`` runs: while the script loads, the servers or the app start."""
    for _ in range(REPEAT):
        run = make_run()
        run.wait_for_process(started)
        run.ctrl_c()
        assert run.wait() in INTERRUPTED
        run.snapshot()
        run.assert_all_stopped()


def test_ctrl_c_with_a_task_running_stops_everything(make_run: Callable[..., MakeRun]) -> None:
    for _ in range(REPEAT):
        run = make_run()
        run.wait_for_round_trip()
        _assert_started_everything(run)
        task_id = run.dispatch("app.tasks.example:sleep_task", 60)["task_id"]
        run.wait_for_output(f"task started id={task_id}")
        run.ctrl_c()
        assert run.wait() in INTERRUPTED
        run.assert_all_stopped()


def test_sigterm_to_make_stops_everything(make_run: Callable[..., MakeRun]) -> None:
    for _ in range(REPEAT):
        run = make_run()
        run.wait_for_round_trip()
        _assert_started_everything(run)
        assert run.process is not None
        run.process.send_signal(signal.SIGTERM)
        assert run.wait() in (0, 143, -signal.SIGTERM)
        run.assert_all_stopped()
