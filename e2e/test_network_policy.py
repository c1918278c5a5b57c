"""NetworkPolicies (on by default) are enforced: NATS and Valkey answer this release's pods only,
and ask them for credentials; the API and metrics ports admit what `networkPolicy.apiFrom` and
`networkPolicy.metricsFrom` allow.

The checks run in pods (e2e/inpod.py through ``kubectl exec``): the release's own server and worker
pods, and probe pods of the release's image that are not part of it, in the release's namespace
and in another one. A blocked connection is one that times out (the enforcer drops its packets) or
is refused; every "blocked" result comes with a control that the same probe pod reaches something
else, so a broken probe cannot pass for a policy.

Needs a CNI that enforces NetworkPolicies (kind's kindnetd; the CI cluster runs
kube-network-policies): set E2E_NETWORK_POLICY=unenforced on a cluster without one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.probes import ProbePods, check, eventually, run_checks
from e2e.support import Kube, Target, helm_upgrade, settled_pods

pytestmark = pytest.mark.e2e

BLOCKED = ("timeout", "refused")
# Labels that the restricted apiFrom / metricsFrom of the last test admit.
API_CLIENT = {"kiqstack-e2e-api-client": "allowed"}
METRICS_CLIENT = {"kiqstack-e2e-metrics-client": "allowed"}


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}


@dataclass(frozen=True)
class Release:
    """Where the release's clients connect to, as its own pods see it."""

    nats: Endpoint
    redis: Endpoint
    api: Endpoint
    metrics: Endpoint
    server_pod: str
    worker_pod: str


@pytest.fixture(scope="module")
def enforced() -> None:
    if os.environ.get("E2E_NETWORK_POLICY", "enforced") == "unenforced":
        pytest.skip("E2E_NETWORK_POLICY=unenforced: this cluster's CNI does not enforce them")


@pytest.fixture(scope="module")
def release(kube: Kube, target: Target) -> Release:
    # (the pods may still be getting ready again after the test before: NATS restarted, workers
    # deleted, an upgrade)
    server, worker = (
        settled_pods(kube, target, role)[0].metadata.name for role in ("server", "worker")
    )
    # NATS_URL / REDIS_URL of the server pod itself: subcharts, harness or external servers alike
    found = check(target, target.namespace, server, "endpoints", container="server")
    service = kube.core.read_namespaced_service(target.server, target.namespace)
    ports = {p.name: p.port for p in service.spec.ports}
    host = f"{target.server}.{target.namespace}.svc"
    return Release(
        nats=Endpoint(found["nats"][0], int(found["nats"][1])),
        redis=Endpoint(found["redis"][0], int(found["redis"][1])),
        api=Endpoint(host, ports["http"]),
        metrics=Endpoint(host, ports["http-metrics"]),
        server_pod=server,
        worker_pod=worker,
    )


@pytest.fixture(scope="module")
def outsiders(probe_pods: ProbePods, target: Target) -> dict[str, tuple[str, str]]:
    """Probe pods outside the release: (namespace, pod) in its namespace and in another one."""
    other = probe_pods.namespace(f"{target.namespace}-e2e-outside")
    return {
        "same-namespace": (target.namespace, probe_pods.pod("e2e-outsider")),
        "other-namespace": (other, probe_pods.pod("e2e-outsider", namespace=other)),
    }


def test_the_release_renders_its_network_policies(kube: Kube, target: Target) -> None:
    policies = kube.networking.list_namespaced_network_policy(
        target.namespace, label_selector=f"app.kubernetes.io/instance={target.release}"
    ).items
    components = {p.metadata.labels.get("app.kubernetes.io/component") for p in policies}
    # NATS and Valkey: the subcharts' pods, or the harness's (networkPolicy.external*.podSelector)
    assert {"server", "worker", "nats", "valkey"} <= components, components


@pytest.mark.parametrize("role", ["server", "worker"])
def test_release_pods_reach_nats_and_valkey(release: Release, target: Target, role: str) -> None:
    pod = release.server_pod if role == "server" else release.worker_pod
    nats_tcp, redis_tcp, nats, redis = run_checks(
        target,
        target.namespace,
        pod,
        [
            ("tcp", release.nats.kwargs()),
            ("tcp", release.redis.kwargs()),
            ("nats", {"login": True}),
            ("redis", {"login": True}),
        ],
        container=role,
    )
    assert (nats_tcp, redis_tcp) == ("open", "open")
    # with the credentials the release was given, both let the pod in
    assert nats["answer"] == "PONG", nats
    assert redis["answers"] == ["+OK", "+PONG"], redis


def test_nats_and_valkey_refuse_clients_without_credentials(
    release: Release, target: Target
) -> None:
    # from a release pod (the policies let it through), without the credentials
    nats, redis = run_checks(
        target,
        target.namespace,
        release.server_pod,
        [("nats", release.nats.kwargs()), ("redis", release.redis.kwargs())],
        container="server",
    )
    assert nats["connect"] == "open", nats
    assert nats["auth_required"] is True, nats
    assert nats["answer"].startswith("-ERR"), nats
    assert "authorization" in nats["answer"].lower(), nats
    assert redis["connect"] == "open", redis
    assert redis["answers"][0].startswith("-NOAUTH"), redis


@pytest.mark.parametrize("where", ["same-namespace", "other-namespace"])
def test_pods_outside_the_release_cannot_reach_nats_or_valkey(
    enforced: None,
    release: Release,
    outsiders: dict[str, tuple[str, str]],
    target: Target,
    where: str,
) -> None:
    namespace, pod = outsiders[where]
    api, nats, redis = run_checks(
        target,
        namespace,
        pod,
        [
            ("http_get", {**release.api.kwargs(), "path": "/livez"}),
            ("tcp", release.nats.kwargs()),
            ("tcp", release.redis.kwargs()),
        ],
    )
    assert api == "200", f"control: the probe pod should reach the API (open to all): {api}"
    assert nats in BLOCKED, (
        f"{where}: NATS {release.nats} answered a pod outside the release: {nats}"
    )
    assert redis in BLOCKED, (
        f"{where}: Valkey {release.redis} answered a pod outside the release: {redis}"
    )


@pytest.fixture
def restricted_api_and_metrics(kube: Kube, target: Target) -> Iterator[None]:
    """The release upgraded with apiFrom / metricsFrom each admitting one label; restored after."""
    helm_upgrade(
        target,
        json_settings={
            "networkPolicy.apiFrom": [{"podSelector": {"matchLabels": API_CLIENT}}],
            "networkPolicy.metricsFrom": [{"podSelector": {"matchLabels": METRICS_CLIENT}}],
        },
    )
    try:
        yield
    finally:
        helm_upgrade(
            target, json_settings={"networkPolicy.apiFrom": [], "networkPolicy.metricsFrom": []}
        )
    policy = kube.networking.read_namespaced_network_policy(target.server, target.namespace)
    assert all(not rule._from for rule in policy.spec.ingress), "apiFrom/metricsFrom not restored"


def _api_and_metrics(
    release: Release, target: Target, namespace: str, pod: str, container: str | None = None
) -> tuple[str, str]:
    api, metrics = run_checks(
        target,
        namespace,
        pod,
        [
            ("http_get", {**release.api.kwargs(), "path": "/livez"}),
            ("http_get", {**release.metrics.kwargs(), "path": "/livez"}),
        ],
        container=container,
    )
    return api, metrics


@pytest.mark.timeout(900)
def test_api_and_metrics_ports_admit_what_the_values_allow(
    enforced: None,
    release: Release,
    outsiders: dict[str, tuple[str, str]],
    probe_pods: ProbePods,
    kube: Kube,
    target: Target,
    request: pytest.FixtureRequest,
) -> None:
    # The defaults (apiFrom and metricsFrom empty): every source reaches both ports.
    for namespace, pod in outsiders.values():
        assert _api_and_metrics(release, target, namespace, pod) == ("200", "200"), (namespace, pod)

    api_client = probe_pods.pod("e2e-api-client", labels=API_CLIENT)
    metrics_client = probe_pods.pod("e2e-metrics-client", labels=METRICS_CLIENT)
    request.getfixturevalue("restricted_api_and_metrics")
    expected = {
        (target.namespace, api_client, None): ("200", "blocked"),
        (target.namespace, metrics_client, None): ("blocked", "200"),
        # this release's pods always reach the API (helm test pods, a worker calling the API)
        (target.namespace, release.worker_pod, "worker"): ("200", "any"),
        **{(ns, pod, None): ("blocked", "blocked") for ns, pod in outsiders.values()},
    }

    def verdict(result: str) -> str:
        return "blocked" if result in BLOCKED else result

    for (namespace, pod, container), want in expected.items():
        eventually(
            lambda ns=namespace, p=pod, c=container: tuple(
                verdict(r) for r in _api_and_metrics(release, target, ns, p, c)
            ),
            lambda got, want=want: all(w in ("any", g) for g, w in zip(got, want, strict=True)),
            f"(API, metrics) from {namespace}/{pod}, expected {want}",
        )
