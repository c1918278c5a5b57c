"""HTTP load for scenario 4: ``POST /tasks/{name}`` against one server, from its own process.

Uses ``wrk`` when it is installed (``apt-get install wrk``): it costs the machine far less CPU per
request than any Python client, so more of the 2 cores is left to the server being measured.
Without it, ``python -m bench.load URL --seconds S --connections C`` runs a small keep-alive
HTTP/1.1 client on asyncio and prints the same JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BODY = b'{"args": [], "kwargs": {}}'

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body   = '{"args": [], "kwargs": {}}'
wrk.headers["Content-Type"] = "application/json"
local statuses = {}
response = function(status, headers, body)
  if status ~= 202 then statuses[status] = (statuses[status] or 0) + 1 end
end
"""


def _wrk(url: str, seconds: float, connections: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    assert wrk is not None  # noqa: S101
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT)
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)

    def pct(label: str) -> float | None:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    return {
        "tool": "wrk",
        "connections": connections,
        "seconds": seconds,
        "requests": total,
        "rps": rps,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
        "latency_ms": {"p50": pct("50"), "p90": pct("90"), "p99": pct("99")},
    }


async def _asyncio_load(url: str, seconds: float, connections: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    done = 0
    bad = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal done, bad
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                done += 1
                if b" 202 " not in status_line:
                    bad += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)

    def pct(q: float) -> float | None:
        return ms[min(len(ms) - 1, int(q / 100 * len(ms)))] if ms else None

    return {
        "tool": "python-asyncio",
        "connections": connections,
        "seconds": elapsed,
        "requests": done,
        "rps": done / elapsed,
        "non_2xx": bad,
        "socket_errors": "",
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99)},
    }


def run_load(url: str, seconds: float, connections: int) -> dict[str, Any]:
    """Load ``url`` for ``seconds`` from a separate process; return its figures."""
    if shutil.which("wrk"):
        return _wrk(url, seconds, connections)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load",
            url,
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the asyncio load generator and print its figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        import uvloop

        out = uvloop.run(_asyncio_load(args.url, args.seconds, args.connections))
    except ImportError:  # pragma: no cover
        out = asyncio.run(_asyncio_load(args.url, args.seconds, args.connections))
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
