"""The logins the chart wires work on real servers, and clients without them are refused.

A real ``nats-server`` runs with the NATS config and the environment the chart gives the NATS
container (the authorization block of ``nats.config.merge``, its variables filled from the
rendered auth Secret), a real ``valkey-server`` with the ACL file valkey-helm's init script
writes from ``valkey.auth.aclUsers`` and the users Secret. The app's NATS_URL and REDIS_URL are
expanded from its env entries the way the kubelet does it. The helm test pod that checks "NATS
and Valkey refuse anonymous clients" runs its own script against them, and against servers
without auth, where it must fail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from scripts.localinfra import Server, find_nats_server, find_redis_server, free_port
from tests.chart.chartlib import CHART_DIR, Rendered, render

pytestmark = pytest.mark.chart


@pytest.fixture(scope="module")
def release(chart: Path) -> Rendered:
    return render(chart)


def secret_value(r: Rendered, ref: dict[str, str]) -> str:
    data = r.get("Secret", ref["name"])["data"]
    return base64.b64decode(data[ref["key"]]).decode()


def container_env(r: Rendered, obj: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet gives the first container: envFrom ConfigMaps, then env in
    order, secretKeyRef values from the rendered Secrets, $(VAR) of earlier entries expanded."""
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    c = spec["containers"][0]
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in c.get("env", []):
        if "valueFrom" in entry:
            env[entry["name"]] = secret_value(r, entry["valueFrom"]["secretKeyRef"])
        else:
            env[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m[1], m[0]),
                entry["value"],
            )
    return env


def local(url: str, port: int) -> str:
    """The URL with its Service host:port replaced by the local server's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="module")
def nats_with_auth(release: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("nats-auth")
    [config] = [o for o in release.find("ConfigMap") if "nats.conf" in o["data"]]
    conf = workdir / "nats.conf"
    conf.write_text(config["data"]["nats.conf"])
    env = container_env(release, release.get("StatefulSet", "demo-nats"))
    logins = [f"{k}={v}" for k, v in env.items() if k.startswith("KIQSTACK_NATS_")]
    assert len(logins) == 2
    port = free_port()
    argv = ["env", *logins, find_nats_server(), "-c", str(conf), "-js", "-sd", str(workdir)]
    argv += ["-a", "127.0.0.1", "-p", str(port), "-m", str(free_port())]
    server = Server("nats-server", argv, "127.0.0.1", port, workdir, workdir / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def valkey_with_auth(
    release: Rendered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("valkey-auth")
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["valkey"]
    # valkey-helm templates/init_config.yaml: one ACL line per aclUsers entry, the password read
    # from usersExistingSecret under passwordKey (default: the user name), stored as its sha256
    [valkey] = [o for o in release.find("Deployment") if "/charts/" in o["_source"]]
    secret = valkey["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    lines = []
    for user, spec in values["auth"]["aclUsers"].items():
        key = spec.get("passwordKey", user)
        digest = hashlib.sha256(secret_value(release, {"name": secret, "key": key}).encode())
        lines.append(f"user {user} on #{digest.hexdigest()} {spec['permissions']}")
    acl = workdir / "users.acl"
    acl.write_text("\n".join(lines) + "\n")
    port = free_port()
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--aclfile", str(acl)]
    server = Server("valkey-server", argv, "127.0.0.1", port, workdir, workdir / "valkey.log")
    yield server.start()
    server.stop()


def app_env(release: Rendered) -> dict[str, str]:
    """The worker's environment; the server and the scheduler get the same credentials and
    settings (the worker adds the queues its pool serves)."""
    env = container_env(release, release.get("Deployment", "demo-kiqstack-worker"))
    assert env["WORKER_QUEUES"] == "default"
    for role in ("server", "scheduler"):
        assert container_env(release, release.get("Deployment", f"demo-kiqstack-{role}")) == {
            **{k: v for k, v in env.items() if k != "WORKER_QUEUES"},
            "RUN_MODE": role,
        }
    return env


async def _nats_roundtrip(url: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=_quiet)
    try:
        js = nc.jetstream()
        info = await js.account_info()  # JetStream answers in the account of the login ($G)
        sub = await nc.subscribe("kiqstack.chart.test")
        await nc.publish("kiqstack.chart.test", b"hi")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hi"
        return int(info.streams)
    finally:
        await nc.close()


async def _quiet(exc: Exception) -> None:
    """nats-py logs every connection error through this callback; the tests check them."""


async def _nats_refused(url: str) -> str:
    with pytest.raises(nats.errors.Error) as excinfo:
        await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=_quiet)
    return str(excinfo.value)


def test_app_logs_in_to_nats(release: Rendered, nats_with_auth: Server) -> None:
    url = local(app_env(release)["NATS_URL"], nats_with_auth.port)
    assert urlsplit(url).username == "kiqstack"
    assert asyncio.run(_nats_roundtrip(url)) >= 0


def test_nats_refuses_other_clients(release: Rendered, nats_with_auth: Server) -> None:
    url = local(app_env(release)["NATS_URL"], nats_with_auth.port)
    parts = urlsplit(url)
    anonymous = f"nats://127.0.0.1:{nats_with_auth.port}"
    wrong = urlunsplit(parts._replace(netloc=f"kiqstack:guess@127.0.0.1:{nats_with_auth.port}"))
    for attempt in (anonymous, wrong):
        assert "Authorization Violation" in asyncio.run(_nats_refused(attempt))


def test_app_logs_in_to_valkey(release: Rendered, valkey_with_auth: Server) -> None:
    url = local(app_env(release)["REDIS_URL"], valkey_with_auth.port)
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.acl_whoami() in ("default", b"default")
        client.set("kiqstack:chart:test", "v", ex=60)
        assert client.get("kiqstack:chart:test") == b"v"
        pubsub = client.pubsub()
        pubsub.subscribe("kiqstack:chart:results")  # result notifications need &*
        assert client.publish("kiqstack:chart:results", "done") == 1
        pubsub.close()
    finally:
        client.close()


def test_valkey_refuses_other_clients(valkey_with_auth: Server) -> None:
    no_retry = Retry(NoBackoff(), 0)  # a refusal is final; redis-py would retry it
    for login in ({}, {"username": "default", "password": "guess"}):
        client = redis.Redis(
            host="127.0.0.1", port=valkey_with_auth.port, socket_timeout=5, retry=no_retry, **login
        )
        with pytest.raises(redis.AuthenticationError):
            client.ping()
        client.close()


def run_auth_test_pod(release: Rendered, nats_port: int, valkey_port: int) -> str:
    """Run the script of the helm test pod "test-auth-required" against local servers."""
    pod = release.get("Pod", "demo-kiqstack-test-auth-required")
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-c"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NATS_HOST"] == "demo-nats.apps.svc"
    assert env["VALKEY_HOST"] == "demo-valkey.apps.svc"
    assert (env["NATS_PORT"], env["VALKEY_PORT"]) == ("4222", "6379")
    local_env = {"NATS_HOST": "127.0.0.1", "NATS_PORT": str(nats_port)}
    local_env |= {"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(valkey_port)}
    proc = subprocess.run(
        [sys.executable, "-c", c["args"][0]],
        env={"PATH": os.environ["PATH"], **local_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_helm_test_pod_passes_when_auth_is_on(
    release: Rendered, nats_with_auth: Server, valkey_with_auth: Server
) -> None:
    out = run_auth_test_pod(release, nats_with_auth.port, valkey_with_auth.port)
    assert out.startswith("exit 0\n"), out
    assert "NATS 127.0.0.1" in out
    assert "VALKEY 127.0.0.1" in out
    assert out.count("refuses a client without credentials") == 2


def test_helm_test_pod_fails_when_auth_is_off(
    release: Rendered, nats: Server, redis: Server
) -> None:
    """The session's servers of tests/conftest.py run without auth."""
    out = run_auth_test_pod(release, nats.port, redis.port)
    assert out.startswith("exit 1\n"), out
    assert out.count("FAILED: does not refuse") == 2
