"""Network probes the e2e suite runs inside pods: ``python -c "<this file>" '<JSON checks>'``.

Standard library only (it runs in the kiqstack image, or any image with a Python). The argument is
a JSON list of ``[name, {keyword arguments}]``; the output is one line, the JSON list of their
results in the same order. Never prints a credential: checks that log in read the URLs from the
pod's own environment (``NATS_URL``, ``REDIS_URL``) and report only what the servers answered.

Connection outcomes are ``"open"``, ``"timeout"`` (no answer: what a NetworkPolicy's dropped
packet looks like), ``"refused"`` or ``"error: <reason>"``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

TIMEOUT = 3.0


def _outcome(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return f"error: {type(exc).__name__}: {exc}"


def tcp(host: str, port: int, timeout: float = TIMEOUT) -> str:
    """Whether a TCP connection to host:port opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except OSError as exc:
        return _outcome(exc)


def endpoints() -> dict[str, list[Any]]:
    """Host and port of NATS and Redis/Valkey from this pod's NATS_URL and REDIS_URL."""
    out = {}
    for name, env, default in (("nats", "NATS_URL", 4222), ("redis", "REDIS_URL", 6379)):
        url = urlsplit(os.environ[env].split(",")[0])
        out[name] = [url.hostname, url.port or default]
    return out


def _exchange(host: str, port: int, greeting: bool, request: bytes) -> tuple[bytes, bytes]:
    """(greeting line, first answer line) of a line-based protocol."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        stream = sock.makefile("rb")
        hello = stream.readline() if greeting else b""
        sock.sendall(request)
        return hello, stream.readline()


def _server(
    host: str | None, port: int | None, env: str, default_port: int, login: bool
) -> tuple[str, int, str, str]:
    """Host, port, user and password: the given host and port, or (when missing or when logging
    in) those of the URL in environment variable ``env``, whose credentials are used to log in."""
    user = password = ""
    if login:
        url = urlsplit(os.environ[env].split(",")[0])
        host, port = host or url.hostname, port or url.port or default_port
        user, password = unquote(url.username or ""), unquote(url.password or "")
    if host is None or port is None:
        raise ValueError(f"no host/port given and login is off ({env})")
    return host, port, user, password


def _nats_connect(user: str, password: str) -> bytes:
    options: dict[str, Any] = {"verbose": False, "pedantic": False, "name": "kiqstack-e2e-probe"}
    if user or password:
        options |= {"user": user, "pass": password}
    return b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n"


def nats(host: str | None = None, port: int | None = None, login: bool = False) -> dict[str, Any]:
    """NATS's INFO (does it require auth?) and its answer to CONNECT + PING, anonymous or with the
    credentials of this pod's NATS_URL (then host and port default to that URL's)."""
    host, port, user, password = _server(host, port, "NATS_URL", 4222, login)
    try:
        hello, answer = _exchange(host, port, True, _nats_connect(user, password))
    except OSError as exc:
        return {"connect": _outcome(exc)}
    info = json.loads(hello[len(b"INFO ") :]) if hello.startswith(b"INFO ") else {}
    return {
        "connect": "open",
        "auth_required": bool(info.get("auth_required")),
        "answer": answer.decode(errors="replace").strip(),
    }


def _resp(*parts: str) -> bytes:
    out = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def redis(host: str | None = None, port: int | None = None, login: bool = False) -> dict[str, Any]:
    """Redis/Valkey's answer to PING, anonymous or after AUTH with this pod's REDIS_URL."""
    host, port, user, password = _server(host, port, "REDIS_URL", 6379, login)
    request = _resp("PING")
    if login:
        request = _resp("AUTH", *([user] if user else []), password) + request
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.settimeout(TIMEOUT)
            stream = sock.makefile("rb")
            sock.sendall(request)
            answers = [stream.readline().decode(errors="replace").strip()]
            if login:
                answers.append(stream.readline().decode(errors="replace").strip())
    except OSError as exc:
        return {"connect": _outcome(exc)}
    return {"connect": "open", "answers": answers}


def http_get(host: str, port: int, path: str = "/livez", timeout: float = TIMEOUT) -> str:
    """The status code of GET path (as a string), or the connection outcome."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "kiqstack"})
        return str(conn.getresponse().status)
    except OSError as exc:
        return _outcome(exc)
    except http.client.HTTPException as exc:
        return f"error: {type(exc).__name__}: {exc}"
    finally:
        conn.close()


def slowloris(
    host: str,
    port: int,
    livez_host: str,
    livez_port: int,
    connections: int = 90,
    give_up: float = 60.0,
) -> dict[str, Any]:
    """Open ``connections`` requests to host:port whose headers never end (one more byte every
    second), until the server has cut every one off or ``give_up`` seconds passed; meanwhile GET
    /livez on livez_host:livez_port every second."""
    socks: dict[int, socket.socket] = {}
    refused: list[str] = []
    for i in range(connections):
        try:
            sock = socket.create_connection((host, port), timeout=TIMEOUT)
        except OSError as exc:
            refused.append(_outcome(exc))
            continue
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: kiqstack\r\nX-Slow: ")
        sock.setblocking(False)
        socks[i] = sock
    opened = len(socks)
    answers: Counter[str] = Counter()
    livez: Counter[str] = Counter()
    start = time.monotonic()
    next_tick = start
    while socks and time.monotonic() - start < give_up:
        for i, sock in list(socks.items()):
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                answers[f"reset ({type(exc).__name__})"] += 1
            else:
                # the server's answer (its status line) or a bare close
                answers[data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"] += 1
            sock.close()
            del socks[i]
        if time.monotonic() >= next_tick:
            next_tick += 1.0
            for i, sock in list(socks.items()):
                try:
                    sock.send(b"a")
                except BlockingIOError:
                    pass
                except OSError as exc:
                    answers[f"send failed ({type(exc).__name__})"] += 1
                    sock.close()
                    del socks[i]
            livez[http_get(livez_host, livez_port, "/livez", timeout=5.0)] += 1
        time.sleep(0.1)
    for sock in socks.values():
        sock.close()
    return {
        "opened": opened,
        "not_opened": refused,
        "still_open": len(socks),
        "answers": dict(answers),
        "livez": dict(livez),
        "seconds": round(time.monotonic() - start, 1),
    }


CHECKS: dict[str, Callable[..., Any]] = {
    "tcp": tcp,
    "endpoints": endpoints,
    "nats": nats,
    "redis": redis,
    "http_get": http_get,
    "slowloris": slowloris,
}


def main() -> None:
    checks = json.loads(sys.argv[1])
    sys.stdout.write(json.dumps([CHECKS[name](**kwargs) for name, kwargs in checks]) + "\n")


if __name__ == "__main__":
    main()
