"""Fixtures of the container tests: the image, real NATS + Redis, and containers that clean up.

The image is built once per session from the working tree (``--build-arg BASE_IMAGE=<local
base>``; the base is built with ``scripts/build-base-image.sh`` when it is missing). NATS
(``nats-server -js``) and Redis run as host processes on free loopback ports; containers use
``--network host`` so they reach them at 127.0.0.1, and get their own free ports through ``PORT`` /
``METRICS_PORT``. What the tests observe (build time, image size, shutdown timings) is listed at the
end of the pytest run.

Every container carries the label ``kiqstack-test=<run id>`` and is removed with ``docker rm -f`` in
teardown, even when a test fails; a session finalizer sweeps the label as a last resort.

Environment: ``DOCKER`` (client with BuildKit), ``IMAGE`` (tag to build, default ``kiqstack:dev``),
``BASE_IMAGE`` (default ``kiqstack/python-base:bookworm``), ``PIP_CA`` (CA bundle for pip inside the
build; empty disables it), ``REQUIRE_DOCKER=1`` (fail instead of skipping when no engine answers;
``make test-container`` sets it).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.localinfra import Server, free_port, nats_server, redis_server
from tests.support.stack import metric_value as page_metric
from tests.support.stack import poll

ROOT = Path(__file__).resolve().parents[2]
LOCAL_BASE_PREFIX = "kiqstack/python-base"
DEFAULT_BASE_IMAGE = "kiqstack/python-base:bookworm"
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
LABEL = "kiqstack-test"
RUN_ID = uuid.uuid4().hex[:8]
# Container probes answer quickly; a cold Python start plus NATS/Redis connect takes a few seconds.
READY_TIMEOUT = 60.0
OBSERVATIONS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List what the container tests observed."""
    if OBSERVATIONS:
        terminalreporter.section("container observations")
        for line in OBSERVATIONS:
            terminalreporter.write_line(line)


@pytest.fixture
def observe() -> Callable[[str], None]:
    """Record an observation for the end-of-run summary."""
    return OBSERVATIONS.append


# -- docker ----------------------------------------------------------------------------------------


def _client_has_buildkit(client: str) -> bool:
    """A client can run BuildKit builds if it has buildx, or is older than 23.0 (built in)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if (
            subprocess.run(
                [client, "buildx", "version"], capture_output=True, timeout=20
            ).returncode
            == 0
        ):
            return True
        out = subprocess.run(
            [client, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        major = out.split(".", 1)[0]
        return major.isdigit() and int(major) < 23
    return False


def find_docker() -> str | None:
    """``$DOCKER``, else the first docker client on PATH that can use BuildKit."""
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"]
    seen: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory, "docker")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            real = str(candidate.resolve())
            if real in seen:
                continue
            seen.append(real)
            if _client_has_buildkit(str(candidate)):
                return str(candidate)
    return None


@dataclass
class Docker:
    """A docker client with a few helpers."""

    client: str

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` and capture its output."""
        proc = subprocess.run(
            [self.client, *args], capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def inspect(self, name: str) -> dict[str, Any]:
        """``docker inspect`` of one object."""
        return json.loads(self.run("inspect", name).stdout)[0]

    def image_exists(self, name: str) -> bool:
        """Whether the engine has this image."""
        return self.run("image", "inspect", name, check=False).returncode == 0


def _no_engine(reason: str) -> None:
    """Skip, or fail when the run asked for the container tests explicitly (REQUIRE_DOCKER=1)."""
    message = f"container tests: {reason}"
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"{message} (REQUIRE_DOCKER=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker() -> Docker:
    """The docker client; skips the container tests when no engine is reachable."""
    client = find_docker()
    if client is None:
        _no_engine("no docker client with BuildKit found (set DOCKER=...)")
    assert client is not None
    try:
        proc = subprocess.run(
            [client, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        _no_engine(f"no Docker engine reachable ({client}: {exc})")
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        _no_engine(f"no Docker engine reachable ({client}: {lines[0] if lines else 'no answer'})")
    return Docker(client)


@dataclass(frozen=True)
class BuiltImage:
    """The image under test."""

    tag: str
    base: str
    version: str
    revision: str


def _project_version() -> str:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def _pip_ca() -> str | None:
    if "PIP_CA" in os.environ:
        return os.environ["PIP_CA"] or None
    return next((path for path in CA_BUNDLES if Path(path).is_file()), None)


@pytest.fixture(scope="session")
def base_image(docker: Docker) -> str:
    """The base image, built with ``scripts/build-base-image.sh`` if it is a missing local base."""
    base = os.environ.get("BASE_IMAGE") or DEFAULT_BASE_IMAGE
    if base.startswith(LOCAL_BASE_PREFIX) and not docker.image_exists(base):
        started = time.monotonic()
        proc = subprocess.run(
            [str(ROOT / "scripts" / "build-base-image.sh"), base],
            env={**os.environ, "DOCKER": docker.client},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"building {base} failed:\n{proc.stdout}\n{proc.stderr}"
        OBSERVATIONS.append(f"built the base {base} in {time.monotonic() - started:.1f}s")
    return base


def build_image(
    docker: Docker,
    context: Path,
    tag: str,
    build_args: dict[str, str],
    dockerfile: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``docker build`` (BuildKit, the pip CA secret); a failure fails unless ``check=False``."""
    args = ["build", "-t", tag]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    if dockerfile:
        args += ["-f", str(context / dockerfile)]
    ca = _pip_ca()
    if ca:
        args += ["--secret", f"id=pip_ca,src={ca}"]
    started = time.monotonic()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    proc = docker.run(*args, str(context), timeout=900, env=env, check=check)
    if proc.returncode == 0:
        OBSERVATIONS.append(f"built {tag} in {time.monotonic() - started:.1f}s")
    return proc


@pytest.fixture(scope="session")
def image(docker: Docker, base_image: str) -> BuiltImage:
    """Build the image from the working tree (BuildKit, the local base, the pip CA secret)."""
    tag = os.environ.get("IMAGE") or "kiqstack:dev"
    version = _project_version()
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    build_args = {"BASE_IMAGE": base_image, "VERSION": version, "REVISION": revision}
    build_image(docker, ROOT, tag, build_args)
    return BuiltImage(tag, base_image, version, revision)


# -- NATS and Redis on the host --------------------------------------------------------------------


@dataclass
class Services:
    """``nats-server -js`` and ``redis-server`` on free loopback ports (``scripts/localinfra``)."""

    nats: Server
    redis: Server

    @property
    def nats_url(self) -> str:
        """NATS URL the containers (host network) use."""
        return f"nats://{self.nats.host}:{self.nats.port}"

    @property
    def redis_url(self) -> str:
        """Redis URL the containers (host network) use."""
        return f"redis://{self.redis.host}:{self.redis.port}/0"


@contextlib.contextmanager
def _services() -> Iterator[Services]:
    with tempfile.TemporaryDirectory(prefix="kiqstack-ctest-") as tmp:
        (Path(tmp) / "nats").mkdir()
        (Path(tmp) / "redis").mkdir()
        nats = nats_server(Path(tmp) / "nats")
        redis = redis_server(Path(tmp) / "redis")
        try:
            nats.start()
            redis.start()
            yield Services(nats, redis)
        finally:
            nats.stop()
            redis.stop()


@pytest.fixture
def services() -> Iterator[Services]:
    """Fresh NATS (JetStream) and Redis for one test."""
    with _services() as running:
        yield running


@pytest.fixture(scope="module")
def module_services() -> Iterator[Services]:
    """NATS (JetStream) and Redis shared by the tests of one module."""
    with _services() as running:
        yield running


# -- containers ------------------------------------------------------------------------------------

# The hardening every container under test gets: what the chart's securityContext asks for.
HARDENING = (
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
)


@dataclass
class Container:
    """A running container of the image under test."""

    docker: Docker
    name: str
    env: dict[str, str]
    port: int
    metrics_port: int

    @property
    def api(self) -> str:
        """Base URL of the API (server, both)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics(self) -> str:
        """Base URL of METRICS_PORT: /metrics and probes (server, worker; both: the worker)."""
        return f"http://127.0.0.1:{self.metrics_port}"

    def logs(self) -> str:
        """Everything the container wrote so far."""
        proc = self.docker.run("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> dict[str, Any]:
        """``State`` of ``docker inspect``."""
        return dict(self.docker.inspect(self.name)["State"])

    def running(self) -> bool:
        """Whether the container is still running."""
        return bool(self.state()["Running"])

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as its user)."""
        return self.docker.run("exec", self.name, *cmd, check=False)

    def wait_ready(self, base_url: str, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``base_url``/readyz until 200; fail with the logs if the container dies."""
        last = "no answer"

        def ready() -> bool | None:
            nonlocal last
            try:
                answer = httpx.get(f"{base_url}/readyz", timeout=2)
                if answer.status_code == 200:
                    return True
                last = f"{answer.status_code} {answer.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if not self.running():
                pytest.fail(f"{self.name} exited ({self.state()}):\n{self.logs()}")
            return None

        poll(ready, timeout, lambda: f"{self.name}: {base_url}/readyz ({last}):\n{self.logs()}")

    def stop(self, timeout: int = 30) -> tuple[float, int]:
        """``docker stop -t timeout``; returns (seconds it took, exit code)."""
        started = time.monotonic()
        self.docker.run("stop", "-t", str(timeout), self.name, timeout=timeout + 60)
        return time.monotonic() - started, int(self.state()["ExitCode"])


class Containers:
    """Starts containers of the image under test and removes every one of them."""

    def __init__(self, docker: Docker, image: BuiltImage, services: Services | None) -> None:
        """Remember what to start containers from."""
        self.docker = docker
        self.image = image
        self.services = services
        self.started: list[Container] = []

    def base_env(self) -> dict[str, str]:
        """Connection settings and short delays for tests."""
        env = {"HOST": "127.0.0.1", "SHUTDOWN_DELAY_SECONDS": "1", "LOG_LEVEL": "INFO"}
        if self.services is not None:
            env |= {"NATS_URL": self.services.nats_url, "REDIS_URL": self.services.redis_url}
        return env

    def start(self, role: str, *args: str, env: dict[str, str] | None = None) -> Container:
        """``docker run -d`` one hardened container with RUN_MODE=role on the host network."""
        name = f"kiqstack-test-{RUN_ID}-{role}-{uuid.uuid4().hex[:6]}"
        port, metrics_port = free_port(), free_port()
        full_env = self.base_env() | {
            "RUN_MODE": role,
            "PORT": str(port),
            "METRICS_PORT": str(metrics_port),
        }
        full_env |= env or {}
        cmd = ["run", "-d", "--name", name, "--label", f"{LABEL}={RUN_ID}", "--network", "host"]
        cmd += HARDENING
        for key, value in full_env.items():
            cmd += ["-e", f"{key}={value}"]
        container = Container(self.docker, name, full_env, port, metrics_port)
        self.started.append(container)  # registered before it runs: teardown removes it anyway
        self.docker.run(*cmd, self.image.tag, *args)
        return container

    def run_once(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``docker run`` in the foreground (hardened) and return its exit code and output."""
        name = f"kiqstack-test-{RUN_ID}-once-{uuid.uuid4().hex[:6]}"
        self.started.append(Container(self.docker, name, env or {}, 0, 0))
        cmd = ["run", "--name", name, "--label", f"{LABEL}={RUN_ID}", "--network", "host"]
        cmd += HARDENING
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        return self.docker.run(*cmd, self.image.tag, *args, check=False, timeout=timeout)

    def remove_all(self) -> None:
        """Print each container's logs (shown when a test fails), then ``docker rm -f`` it."""
        for container in self.started:
            if self.docker.run("inspect", container.name, check=False).returncode != 0:
                continue
            sys.stdout.write(f"\n----- logs of {container.name} -----\n{container.logs()}\n")
            self.docker.run("rm", "-f", container.name, check=False)
        self.started.clear()


@pytest.fixture(scope="session", autouse=True)
def _sweep_containers() -> Iterator[None]:
    """Last resort: remove anything this session labelled, whatever happened."""
    yield
    client = find_docker()
    if client is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        ids = subprocess.run(
            [client, "ps", "-aq", "--filter", f"label={LABEL}={RUN_ID}"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        if ids:
            subprocess.run([client, "rm", "-f", *ids], capture_output=True, timeout=120)


@pytest.fixture
def containers(docker: Docker, image: BuiltImage, services: Services) -> Iterator[Containers]:
    """Per-test containers wired to per-test NATS and Redis."""
    made = Containers(docker, image, services)
    try:
        yield made
    finally:
        made.remove_all()


@pytest.fixture
def bare_containers(docker: Docker, image: BuiltImage) -> Iterator[Containers]:
    """Containers with no NATS/Redis behind them (image checks, bad settings)."""
    made = Containers(docker, image, None)
    try:
        yield made
    finally:
        made.remove_all()


@pytest.fixture(scope="module")
def module_containers(
    docker: Docker, image: BuiltImage, module_services: Services
) -> Iterator[Containers]:
    """Containers shared by the tests of one module."""
    made = Containers(docker, image, module_services)
    try:
        yield made
    finally:
        made.remove_all()


# -- HTTP helpers ----------------------------------------------------------------------------------


def dispatch(
    api: str, task: str, *args: Any, wait: float | None = None, **kwargs: Any
) -> httpx.Response:
    """``POST /tasks/{task}`` with these arguments (``wait`` seconds for the result if given)."""
    params = {"wait": wait} if wait else None
    return httpx.post(
        f"{api}/tasks/{task}",
        json={"args": list(args), "kwargs": kwargs},
        params=params,
        timeout=30,
    )


def wait_for_status(
    api: str,
    task_id: str,
    timeout: float = 30,
    done: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Poll ``GET /tasks/{task_id}`` until the task is finished (or ``done`` says so)."""
    finished = done or (lambda body: body["status"] != "queued")
    body: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal body
        answer = httpx.get(f"{api}/tasks/{task_id}", timeout=5)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body if finished(body) else None

    return poll(check, timeout, lambda: f"task {task_id} not finished: {body}")


@pytest.fixture
def wait_status() -> Callable[..., dict[str, Any]]:
    """:func:`wait_for_status` as a fixture."""
    return wait_for_status


def read_metric(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` (with these labels) on ``base_url``/metrics (0: none)."""
    answer = httpx.get(f"{base_url}/metrics", timeout=5)
    assert answer.status_code == 200, answer.text
    try:
        return page_metric(answer.text, name, **labels)
    except KeyError:
        return 0.0


@pytest.fixture
def metric_value() -> Callable[..., float]:
    """:func:`read_metric` as a fixture."""
    return read_metric
