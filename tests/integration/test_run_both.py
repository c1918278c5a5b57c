"""``python -m app both`` (RUN_MODE=both) stops all of its processes, whatever stops it."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from scripts.localinfra import processes
from tests.support.stack import Role, Stack, poll

pytestmark = [pytest.mark.integration, pytest.mark.process]


def _group(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of a process group: pid -> command line."""
    return {p.pid: p.cmdline for p in processes().values() if p.pgid == pgid and p.state != "Z"}


def _wait_gone(both: Role) -> None:
    """Wait until no process of ``both``'s group is left (a deadline, not a speed)."""
    assert both.process is not None
    pgid = both.process.pid
    poll(
        lambda: True if not _group(pgid) else None,
        30,
        lambda: f"still running: {_group(pgid)}\n{both.logs()}",
    )


def _started(stack: Stack, **settings: str) -> tuple[Role, dict[int, str]]:
    both = stack.role("both", **settings)
    answer = httpx.post(
        f"{both.probe_url}/tasks/app.tasks.example:add",
        json={"args": [2, 3]},
        params={"wait": 30},
        timeout=60,
    )
    assert answer.json()["result"] == 5
    assert both.process is not None
    members = _group(both.process.pid)
    commands = " | ".join(members.values())
    assert len(members) >= 4, f"both, server, taskiq process manager and worker: {commands}"
    assert "-m app server" in commands
    assert commands.count("-m app worker") >= 2, commands  # supervisor + worker process
    return both, members


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda sig: sig.name
)
def test_a_stop_signal_stops_every_process(stack: Stack, sig: signal.Signals) -> None:
    both, _ = _started(stack)
    both.signal(sig)
    assert both.wait(60) == 0, both.logs()
    assert both.process is not None
    _wait_gone(both)
    assert f"{sig.name}: stopping server and worker" in both.logs()


def test_ctrl_c_in_a_terminal_stops_every_process(stack: Stack) -> None:
    """A terminal sends SIGINT to every process of the group: ``both`` adds one SIGTERM each."""
    both, _ = _started(stack)
    assert both.process is not None
    os.killpg(both.process.pid, signal.SIGINT)
    assert both.wait(60) == 0, both.logs()
    _wait_gone(both)


def test_a_child_that_does_not_stop_is_killed(stack: Stack) -> None:
    # Grace period: 2 * 0 + 5 + 15 = 20 s.
    both, members = _started(stack, WORKER_SHUTDOWN_TIMEOUT="0", SHUTDOWN_DELAY_SECONDS="0")
    assert both.process is not None
    manager = min(pid for pid, cmd in members.items() if "-m app worker" in cmd)  # the supervisor
    os.kill(manager, signal.SIGSTOP)  # deaf to SIGTERM until killed
    both.signal(signal.SIGTERM)
    assert both.wait(120) == 1, both.logs()
    assert "worker still running" in both.logs()
    assert "killing it" in both.logs()
