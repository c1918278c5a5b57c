"""Fixtures of the kind e2e suite (`pytest e2e/`, marker `e2e`).

The suite tests a kiqstack release that is already installed (``make e2e`` / e2e/run.sh
installs one on kind). Without a reachable cluster, or without the release, every test is
SKIPPED with the reason; with ``E2E_REQUIRE=1`` (set by e2e/run.sh and CI) the same conditions
FAIL instead.

Environment:
  E2E_KUBE_CONTEXT  kubeconfig context (default: the current one; KUBECONFIG is honoured)
  E2E_NAMESPACE     namespace of the release [kiqstack]
  E2E_RELEASE       Helm release name [kiqstack]
  E2E_FULLNAME      resource name prefix (default: the chart's rule: <release> when the release
                    name contains "kiqstack", else <release>-kiqstack)
  E2E_BASE_URL      API base URL (skips the port-forward, e.g. an Ingress or a NodePort)
  E2E_API_TOKEN     bearer token when the release sets API_TOKEN
  E2E_REQUIRE       1 = fail instead of skip when the cluster or release is missing
  E2E_CHART         chart directory for `helm upgrade` (with its dependencies) [chart]
  E2E_NATS_SELECTOR label selector of the NATS pods in the namespace
                    [app.kubernetes.io/name=nats,app.kubernetes.io/instance=<release>]
  E2E_ARTIFACTS     where pod logs are written when a test failed [.tmp/e2e-artifacts]
  E2E_NETWORK_POLICY  enforced (the cluster's CNI enforces NetworkPolicies: kind's kindnetd, the CI
                    cluster's kube-network-policies) | unenforced (the tests that need enforcement
                    are skipped) [enforced]
  E2E_ORDER         forward | reverse: run the test modules in reverse order (the tests of each
                    module keep theirs), to check that no test depends on what the ones before it
                    left behind (pods still restarting after NATS was deleted, workers replaced,
                    an upgrade rolling) [forward]
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from e2e.probes import ProbePods
from e2e.support import (
    Api,
    Kube,
    PortForward,
    Target,
    helm_upgrade,
    kubectl_path,
    unavailable,
    wait_rollout,
)

# ACK_WAIT_SECONDS of the resilience tests: a killed worker's tasks are redelivered after 20 s
# instead of the chart's default 300 s, so "nothing is lost" is proven in minutes.
E2E_ACK_WAIT_SECONDS = 20


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """E2E_ORDER=reverse: the modules in reverse order, each module's tests in their own."""
    order = os.environ.get("E2E_ORDER", "forward")
    if order not in ("forward", "reverse"):
        raise pytest.UsageError(f"E2E_ORDER must be forward or reverse, not {order!r}")
    if order == "forward":
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    items[:] = [item for module in reversed(modules.values()) for item in module]


def _fullname(release: str) -> str:
    return release if "kiqstack" in release else f"{release}-kiqstack"


@pytest.fixture(scope="session")
def target() -> Target:
    release = os.environ.get("E2E_RELEASE", "kiqstack")
    return Target(
        context=os.environ.get("E2E_KUBE_CONTEXT") or None,
        namespace=os.environ.get("E2E_NAMESPACE", "kiqstack"),
        release=release,
        fullname=os.environ.get("E2E_FULLNAME") or _fullname(release),
    )


@pytest.fixture(scope="session")
def kube(target: Target, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """API clients for the cluster; skips the suite when no cluster or no release is reachable."""
    try:
        api_client = config.new_client_from_config(context=target.context)
    except (ConfigException, OSError, TypeError) as exc:
        unavailable(f"no Kubernetes cluster configured ({type(exc).__name__}: {exc})")
    try:
        version = client.VersionApi(api_client).get_code(_request_timeout=5)
    except Exception as exc:  # any failure means "not reachable"
        api_client.close()
        unavailable(f"Kubernetes API not reachable ({type(exc).__name__}: {str(exc)[:200]})")
    kube = Kube(api_client)
    try:
        kube.apps.read_namespaced_deployment(target.server, target.namespace, _request_timeout=10)
    except ApiException as exc:
        api_client.close()
        unavailable(
            f"cluster {version.git_version} reachable, but deployment "
            f"{target.namespace}/{target.server} was not found (HTTP {exc.status}); "
            f"is release {target.release!r} installed?"
        )
    yield kube
    if request.session.testsfailed:
        _dump_logs(kube, target)
    api_client.close()


def _dump_logs(kube: Kube, target: Target) -> None:
    """Write the logs of the release's pods (selected by the chart's shared labels)."""
    out = pathlib.Path(os.environ.get("E2E_ARTIFACTS", ".tmp/e2e-artifacts")) / "pytest-logs"
    out.mkdir(parents=True, exist_ok=True)
    selector = f"app.kubernetes.io/instance={target.release}"
    try:
        pods = kube.core.list_namespaced_pod(target.namespace, label_selector=selector).items
    except ApiException:
        return
    for pod in pods:
        for container in pod.spec.containers:
            name = f"{pod.metadata.name}.{container.name}.log"
            try:
                text = kube.core.read_namespaced_pod_log(
                    pod.metadata.name, target.namespace, container=container.name, tail_lines=2000
                )
            except ApiException as exc:
                text = f"(logs unavailable: {exc.status} {exc.reason})"
            (out / name).write_text(text)


@pytest.fixture(scope="session")
def api(kube: Kube, target: Target) -> Iterator[Api]:
    """The kiqstack API: E2E_BASE_URL, or `kubectl port-forward` to the server Service."""
    token = os.environ.get("E2E_API_TOKEN") or None
    base_url = os.environ.get("E2E_BASE_URL")
    if base_url:
        api = Api(base_url, token=token)
        yield api
        api.close()
        return
    kubectl = kubectl_path()
    if kubectl is None:
        unavailable("kubectl is not on PATH (needed to port-forward; or set E2E_BASE_URL)")
    forward = PortForward(kubectl, target, f"service/{target.server}", 8000)
    forward.start()
    api = Api(forward.url, token=token, forward=forward)
    try:
        response = api.get("/readyz")
        assert response.status_code == 200, f"/readyz: {response.status_code} {response.text}"
        yield api
    finally:
        api.close()
        forward.close()


@pytest.fixture(scope="session")
def ack_wait_seconds(kube: Kube, target: Target, api: Api) -> float:
    """ACK_WAIT_SECONDS of the release, set to E2E_ACK_WAIT_SECONDS first when it differs.

    A release installed with the chart's defaults (300 s) gets one `helm upgrade --reuse-values
    --set config.ackWaitSeconds=20` (e2e/values.yaml on kind already has 20 s).
    """
    data = kube.core.read_namespaced_config_map(target.fullname, target.namespace).data or {}
    if float(data.get("ACK_WAIT_SECONDS", "0")) != E2E_ACK_WAIT_SECONDS:
        helm_upgrade(target, f"config.ackWaitSeconds={E2E_ACK_WAIT_SECONDS}")
        for deployment in (target.server, target.worker):
            wait_rollout(kube, target, deployment)
    return float(E2E_ACK_WAIT_SECONDS)


@pytest.fixture(scope="session")
def probe_pods(kube: Kube, target: Target) -> Iterator[ProbePods]:
    """Sleeping pods of the release's image to probe the network from (deleted at the end)."""
    pods = ProbePods(kube, target)
    yield pods
    pods.close()
