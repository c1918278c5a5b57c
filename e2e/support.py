"""Helpers of the e2e suite: reaching the API, dispatching tasks, reading metrics and rollouts."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

# The example tasks of app/tasks/example.py (names are `module:function`).
ADD = "app.tasks.example:add"
RISKY = "app.tasks.example:risky_task"
SLEEP = "app.tasks.example:sleep_task"
NOOP = "app.tasks.example:noop"

FINAL_STATUSES = frozenset({"success", "error"})


def env_flag(name: str) -> bool:
    """True when the environment variable is set to 1/true/yes."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip (default) or fail (E2E_REQUIRE=1) because the environment cannot run the suite."""
    if env_flag("E2E_REQUIRE"):
        pytest.fail(f"E2E_REQUIRE=1 but {reason}", pytrace=False)
    pytest.skip(
        f"e2e skipped: {reason} (run `make e2e` on a machine with docker, kind, kubectl and helm)"
    )


@dataclass(frozen=True)
class Target:
    """Where the release under test lives. Everything comes from E2E_* variables (see conftest)."""

    context: str | None
    namespace: str
    release: str
    fullname: str

    @property
    def server(self) -> str:
        return f"{self.fullname}-server"

    @property
    def worker(self) -> str:
        return f"{self.fullname}-worker"

    def selector(self, component: str) -> str:
        """Label selector of one component, with the chart's shared labels."""
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}"


@dataclass
class Kube:
    """Typed API clients bound to one kubeconfig context."""

    api_client: client.ApiClient
    core: client.CoreV1Api = field(init=False)
    apps: client.AppsV1Api = field(init=False)
    autoscaling: client.AutoscalingV2Api = field(init=False)
    custom: client.CustomObjectsApi = field(init=False)
    networking: client.NetworkingV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.autoscaling = client.AutoscalingV2Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.networking = client.NetworkingV1Api(self.api_client)


class PortForward:
    """`kubectl port-forward` to a Service on a random local port, restarted when it dies.

    A Service port-forward sticks to one pod; when that pod goes away (rollout, upgrade) kubectl
    exits, and the API client below calls :meth:`restart`.
    """

    _FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")

    def __init__(self, kubectl: str, target: Target, resource: str, remote_port: int) -> None:
        self._cmd = [kubectl]
        if target.context:
            self._cmd += ["--context", target.context]
        self._cmd += [
            "--namespace",
            target.namespace,
            "port-forward",
            resource,
            f"0:{remote_port}",
            "--address",
            "127.0.0.1",
        ]
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.url = ""

    def start(self, timeout: float = 60.0) -> None:
        lines: queue.Queue[str] = queue.Queue()
        proc = subprocess.Popen(
            self._cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def pump() -> None:
            # Keep draining: kubectl prints a line per connection and would block on a full pipe.
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line.rstrip())
            match = self._FORWARDING.search(line)
            if match:
                self._proc = proc
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return
        proc.kill()
        raise RuntimeError(f"{' '.join(self._cmd)} did not start: {' | '.join(seen[-5:])}")

    def restart(self) -> None:
        with self._lock:
            self.close()
            self.start()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Api:
    """The kiqstack HTTP API; retries transport errors, restarting the port-forward if any."""

    def __init__(
        self, base_url: str, token: str | None = None, forward: PortForward | None = None
    ) -> None:
        self._forward = forward
        self._base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            timeout=httpx.Timeout(30.0, connect=5.0),
            headers=headers,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    @property
    def base_url(self) -> str:
        return self._forward.url if self._forward else self._base_url

    def request(self, method: str, path: str, attempts: int = 8, **kwargs: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(attempts):
            url = self.base_url
            try:
                return self._http.request(method, url + path, **kwargs)
            except httpx.TransportError as exc:
                last = exc
                time.sleep(min(0.5 * (attempt + 1), 3.0))
                if self._forward is not None and self.base_url == url:
                    with contextlib.suppress(RuntimeError):
                        self._forward.restart()
        raise AssertionError(f"{method} {path}: API unreachable after {attempts} attempts: {last}")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def dispatch_raw(
        self, task: str, *args: Any, wait: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        params = {"wait": wait} if wait is not None else None
        return self.request(
            "POST",
            f"/tasks/{quote(task, safe=':')}",
            json={"args": list(args), "kwargs": kwargs},
            params=params,
        )

    def dispatch(self, task: str, *args: Any, **kwargs: Any) -> str:
        """Queue a task and return its id (asserts the 202 contract)."""
        response = self.dispatch_raw(task, *args, **kwargs)
        assert response.status_code == 202, f"POST {task}: {response.status_code} {response.text}"
        body = response.json()
        assert body["task_name"] == task, body
        assert body["status_url"] == f"/tasks/{body['task_id']}", body
        return str(body["task_id"])

    def status(self, task_id: str) -> dict[str, Any]:
        response = self.get(f"/tasks/{task_id}")
        assert response.status_code == 200, (
            f"GET /tasks/{task_id}: {response.status_code} {response.text}"
        )
        body: dict[str, Any] = response.json()
        return body

    def wait_for(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(task_id)
            if body["status"] in FINAL_STATUSES:
                return body
            assert time.monotonic() < deadline, (
                f"task {task_id} still {body['status']} after {timeout}s"
            )
            time.sleep(0.25)

    def dispatch_many(
        self, calls: Iterable[tuple[str, tuple[Any, ...]]], workers: int = 16
    ) -> list[str]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda call: self.dispatch(call[0], *call[1]), calls))

    def wait_all(
        self,
        task_ids: list[str],
        timeout: float,
        workers: int = 16,
        on_round: Callable[[int], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until every task is final; returns id -> status body. Fails listing what is left."""
        done: dict[str, dict[str, Any]] = {}
        pending = list(task_ids)
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(workers) as pool:
            while pending:
                for task_id, body in zip(pending, pool.map(self.status, pending), strict=True):
                    if body["status"] in FINAL_STATUSES:
                        done[task_id] = body
                pending = [t for t in pending if t not in done]
                if on_round is not None:
                    on_round(len(done))
                if not pending:
                    break
                assert time.monotonic() < deadline, (
                    f"{len(pending)} of {len(task_ids)} tasks not finished after {timeout}s, "
                    f"e.g. {pending[:5]}"
                )
                time.sleep(1.0)
        return done

    def close(self) -> None:
        self._http.close()


def kubectl_path() -> str | None:
    return shutil.which(os.environ.get("E2E_KUBECTL", "kubectl"))


# --- Prometheus text format -------------------------------------------------------------------


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition as (name, labels, value)."""
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_names(text: str) -> set[str]:
    return {name for name, _, _ in parse_metrics(text)}


def metric_sum(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for sample, sample_labels, value in parse_metrics(text)
        if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled series, or None when it is absent."""
    for sample, labels, value in parse_metrics(text):
        if sample == name and not labels:
            return value
    return None


# --- Cluster state ----------------------------------------------------------------------------


def ready_pods(kube: Kube, target: Target, component: str) -> list[client.V1Pod]:
    """Running, Ready, not terminating pods of one component."""
    pods = kube.core.list_namespaced_pod(
        target.namespace, label_selector=target.selector(component)
    )
    return [
        pod
        for pod in pods.items
        if pod.metadata.deletion_timestamp is None
        and pod.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def scrape_pod(kube: Kube, target: Target, pod: str, port: int, path: str = "metrics") -> str:
    """GET a pod port through the API server proxy (the cluster network, no port-forward)."""
    text: str = kube.core.connect_get_namespaced_pod_proxy_with_path(
        f"{pod}:{port}", target.namespace, path, _request_timeout=10
    )
    return text


def scrape_service(
    kube: Kube, target: Target, service: str, port: str, path: str = "metrics"
) -> str:
    """GET a Service port (by name) through the API server proxy."""
    text: str = kube.core.connect_get_namespaced_service_proxy_with_path(
        f"{service}:{port}", target.namespace, path, _request_timeout=10
    )
    return text


def wait_rollout(kube: Kube, target: Target, deployment: str, timeout: float = 300.0) -> None:
    """Like `kubectl rollout status`: the newest template is fully rolled out and available, and
    no pod of an older template is left, not even one still terminating (a draining worker of the
    old configuration would otherwise still be running tasks when the next test starts)."""
    deadline = time.monotonic() + timeout
    while True:
        dep = kube.apps.read_namespaced_deployment(deployment, target.namespace)
        status, want = dep.status, dep.spec.replicas or 0
        selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
        pods = kube.core.list_namespaced_pod(target.namespace, label_selector=selector).items
        if (
            (status.observed_generation or 0) >= dep.metadata.generation
            and (status.updated_replicas or 0) == want
            and (status.replicas or 0) == want
            and (status.available_replicas or 0) == want
            and len(pods) == want
            and all(pod.metadata.deletion_timestamp is None for pod in pods)
        ):
            return
        assert time.monotonic() < deadline, (
            f"deployment {deployment} not rolled out after {timeout}s: {status}"
        )
        time.sleep(2.0)


def settled_pods(
    kube: Kube, target: Target, component: str, minimum: int = 1, timeout: float = 300.0
) -> list[client.V1Pod]:
    """The ready pods of one component once its Deployment has settled (:func:`wait_rollout`)
    and at least ``minimum`` of them are ready.

    Tests call this instead of reading :func:`ready_pods` once: the test before may have deleted
    worker pods, restarted NATS (the pods are not ready until they reconnect) or upgraded the
    release, so the pods a test needs may still be on their way. Fails after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    deployment = target.server if component == "server" else target.worker
    wait_rollout(kube, target, deployment, timeout=timeout)
    while True:
        pods = ready_pods(kube, target, component)
        if len(pods) >= minimum:
            return pods
        assert time.monotonic() < deadline, (
            f"{len(pods)} ready {component} pod(s), {minimum} needed, after {timeout:.0f}s"
        )
        time.sleep(2.0)


def rollout_restart(kube: Kube, target: Target, deployment: str) -> None:
    """What `kubectl rollout restart deployment/<name>` does: stamp the pod template."""
    now = dt.datetime.now(dt.UTC).isoformat()
    body = {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}
        }
    }
    kube.apps.patch_namespaced_deployment(deployment, target.namespace, body)


@contextlib.contextmanager
def sampling(sample: Callable[[], float | None], interval: float = 1.0) -> Iterator[list[float]]:
    """Call ``sample`` every ``interval`` seconds in a thread while the block runs."""
    values: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                value = sample()
                if value is not None:
                    values.append(value)
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield values
    finally:
        stop.set()
        thread.join(timeout=30)


# --- Worker logs: executions per task id ------------------------------------------------------

_TEXT_EVENT = re.compile(r"task (started|finished) id=(\S+)")


@dataclass
class Execution:
    """One run of a task on one worker pod, from its "task started" log line."""

    task_id: str
    pod: str
    started: float
    finished: float | None = None
    # when the pod's log stream ended (the container exited), for runs that never finished
    stream_end: float | None = None

    @property
    def alive_until(self) -> float:
        """When this run stopped: its "task finished" line, else the end of its pod's log."""
        if self.finished is not None:
            return self.finished
        return self.stream_end if self.stream_end is not None else float("inf")


def _log_event(text: str) -> tuple[str, str] | None:
    """("start"|"finish", task id) of a kiqstack worker log line (JSON or text), else None."""
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            return None
        event, task_id = entry.get("event"), entry.get("task_id")
        if event in ("start", "finish") and isinstance(task_id, str):
            return str(event), task_id
        return None
    match = _TEXT_EVENT.search(text)
    if match:
        return ("start" if match.group(1) == "started" else "finish"), match.group(2)
    return None


def _kubelet_time(stamp: str) -> float:
    """Seconds since the epoch of a `kubectl logs --timestamps` prefix (RFC 3339, nanoseconds)."""
    main, _, frac = stamp.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(main).replace(tzinfo=dt.UTC).timestamp()
    return base + float(f"0.{frac or 0}")


class WorkerLogs:
    """Follow the logs of every worker pod (new ones included) while a ``with`` block runs.

    A pod's log disappears with the pod, so the lines are read as they are written, through the API
    server, with the kubelet's timestamps (one clock). :meth:`executions` turns the "task started" /
    "task finished" lines into runs per task id.
    """

    def __init__(self, kube: Kube, target: Target, container: str = "worker") -> None:
        self._kube, self._target, self._container = kube, target, container
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._followed: set[str] = set()
        self._threads: list[threading.Thread] = []
        # (pod, kubelet time, text); stream ends by pod
        self.lines: list[tuple[str, float, str]] = []
        self.stream_end: dict[str, float] = {}

    def __enter__(self) -> WorkerLogs:
        self._discover_once()
        watcher = threading.Thread(target=self._discover, daemon=True)
        watcher.start()
        self._threads.append(watcher)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2.0)  # the last lines of the pods that are still running
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)

    def _discover(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self._discover_once()

    def _discover_once(self) -> None:
        pods = self._kube.core.list_namespaced_pod(
            self._target.namespace, label_selector=self._target.selector("worker")
        ).items
        for pod in pods:
            name = pod.metadata.name
            statuses = pod.status.container_statuses or []
            running = any(s.name == self._container and s.state.running for s in statuses)
            if name in self._followed or not running:
                continue
            self._followed.add(name)
            thread = threading.Thread(target=self._follow, args=(name,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _follow(self, pod: str) -> None:
        seen: set[str] = set()
        since: int | None = None
        while not self._stop.is_set():
            # the pod going away (404) or a broken stream ends the read
            with contextlib.suppress(Exception):
                stream = self._kube.core.read_namespaced_pod_log(
                    pod,
                    self._target.namespace,
                    container=self._container,
                    follow=True,
                    timestamps=True,
                    since_seconds=since,
                    _preload_content=False,
                )
                for raw in stream:
                    for line in raw.decode(errors="replace").splitlines():
                        stamp, _, text = line.partition(" ")
                        if line in seen or not stamp[:1].isdigit():
                            continue
                        seen.add(line)
                        with self._lock:
                            self.lines.append((pod, _kubelet_time(stamp), text))
                    if self._stop.is_set():
                        break
                stream.release_conn()
            ended = time.time()
            if not self._still_running(pod):
                with self._lock:
                    self.stream_end[pod] = ended
                return
            since = 30  # reconnect to a broken stream; repeated lines are skipped
            time.sleep(1.0)

    def _still_running(self, pod: str) -> bool:
        try:
            status = self._kube.core.read_namespaced_pod(pod, self._target.namespace).status
        except Exception:
            return False
        return any(
            s.name == self._container and s.state.running for s in status.container_statuses or []
        )

    def executions(self, task_ids: Iterable[str]) -> dict[str, list[Execution]]:
        """The runs of the given tasks, in start order."""
        wanted = set(task_ids)
        runs: dict[str, list[Execution]] = {t: [] for t in wanted}
        open_runs: dict[tuple[str, str], Execution] = {}
        with self._lock:
            lines = sorted(self.lines, key=lambda line: line[1])
            ends = dict(self.stream_end)
        for pod, at, text in lines:
            event = _log_event(text)
            if event is None or event[1] not in wanted:
                continue
            kind, task_id = event
            if kind == "start":
                run = Execution(task_id, pod, at, stream_end=ends.get(pod))
                runs[task_id].append(run)
                open_runs[(pod, task_id)] = run
            elif (run := open_runs.pop((pod, task_id), None)) is not None:
                run.finished = at
        return runs


def concurrent_runs(runs: dict[str, list[Execution]]) -> list[str]:
    """Tasks that started again while an earlier run of theirs was still alive, described."""
    problems = []
    for task_id, executions in runs.items():
        for i, later in enumerate(executions):
            for earlier in executions[:i]:
                if later.started < earlier.alive_until:
                    problems.append(
                        f"{task_id}: ran on {earlier.pod} from {earlier.started:.3f} "
                        f"(alive until {earlier.alive_until:.3f}) and again on {later.pod} from "
                        f"{later.started:.3f}, {later.started - earlier.started:.2f}s later"
                    )
    return problems


# --- The release's pods and Helm --------------------------------------------------------------


def kiqstack_pods(kube: Kube, target: Target) -> list[client.V1Pod]:
    """The release's server and worker pods (not its helm test pods), terminating ones included."""
    pods = kube.core.list_namespaced_pod(
        target.namespace, label_selector=f"app.kubernetes.io/instance={target.release}"
    ).items
    return [
        pod
        for pod in pods
        if (pod.metadata.labels or {}).get("app.kubernetes.io/component") in ("server", "worker")
    ]


def helm_upgrade(
    target: Target,
    *settings: str,
    json_settings: dict[str, Any] | None = None,
    timeout: str = "10m",
) -> None:
    """`helm upgrade --reuse-values --set ... --set-json ... --wait` of the release under test
    (E2E_CHART). ``json_settings`` maps value paths to JSON values (lists, objects): a value is
    restored by setting it to the chart's default, as `--set key=null` does not undo a former
    `--set` under `--reuse-values`."""
    helm = shutil.which(os.environ.get("E2E_HELM", "helm"))
    chart = os.environ.get("E2E_CHART", "chart")
    if helm is None:
        unavailable("the helm CLI is not on PATH (needed to upgrade the release)")
    if not os.path.isfile(os.path.join(chart, "Chart.yaml")) or not os.path.isdir(
        os.path.join(chart, "charts")
    ):
        unavailable(
            f"{chart}/ with built dependencies not found (run `helm dependency build {chart}`)"
        )
    cmd = [helm, "upgrade", target.release, chart, "--namespace", target.namespace]
    if target.context:
        cmd += ["--kube-context", target.context]
    cmd += ["--reuse-values", *(a for s in settings for a in ("--set", s))]
    for key, value in (json_settings or {}).items():
        cmd += ["--set-json", f"{key}={json.dumps(value)}"]
    cmd += ["--wait", "--timeout", timeout]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
