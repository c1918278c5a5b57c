"""Process helpers for the benchmark: start, stop, and read CPU time and peak RSS from ``/proc``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from scripts.localinfra import Process

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.append(int(child))
                    stack.append(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_mb(pid: int, field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (``VmHWM``) of a process in MiB (0 when it is gone)."""
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    """Current resident set size (``VmRSS``) of a process in MiB (0 when it is gone)."""
    return _status_mb(pid, "VmRSS:")


def pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split between their users) in MiB, 0 when gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


class Proc(Process):
    """A process we started in its own session (so its whole group can be stopped)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        """Start ``argv`` with ``env``; stdout and stderr go to ``log``."""
        super().__init__(argv, log, env=env, cwd=ROOT, session=True)
        self.log = log
        self.spawn()

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.running

    def main_pid(self) -> int:
        """The process doing the work: the largest descendant (taskiq's worker), or itself."""
        kids = descendants(self.pid)
        return max(kids, key=peak_rss_mb) if kids else self.pid

    def tree(self) -> list[int]:
        """The process and its live descendants."""
        return [self.pid, *descendants(self.pid)]

    def memory(self) -> dict[str, float]:
        """Peak RSS of the largest process, the sum of the peaks, and PSS now (MiB)."""
        pids = self.tree()
        peaks = [peak_rss_mb(p) for p in pids]
        return {
            "largest_mb": round(max(peaks), 1),
            "total_mb": round(sum(peaks), 1),
            "pss_total_mb": round(sum(pss_mb(p) for p in pids), 1),
            "processes": len([p for p in peaks if p > 0]),
        }

    def tree_cpu(self) -> float:
        """CPU seconds used by the process and its live descendants."""
        return cpu_seconds(self.pid) + sum(cpu_seconds(p) for p in descendants(self.pid))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to the whole group after ``timeout``."""
        super().stop(sig, timeout)


def python() -> str:
    """The interpreter running the benchmark (the project's venv)."""
    return sys.executable
