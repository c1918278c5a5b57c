"""NetworkPolicies (on by default): who may reach NATS, Valkey, the API and the metrics ports.

The rendered policies are evaluated with the NetworkPolicy semantics of the Kubernetes API
(a rule admits a source when one of its peers selects it, a rule without ``from`` admits every
source, several policies add up). Whether a CNI enforces them is the kind e2e's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartlib import Rendered, container, render

pytestmark = pytest.mark.chart

RELEASE = {"app.kubernetes.io/instance": "demo"}


@dataclass
class Source:
    """A pod that opens a connection: its labels and its namespace's labels."""

    labels: dict[str, str]
    namespace: str = "apps"
    namespace_labels: dict[str, str] = field(default_factory=dict)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics (an empty selector selects everything)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def peer_admits(peer: dict[str, Any], src: Source, namespace: str) -> bool:
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None:
        in_namespace = src.namespace == namespace
    else:
        ns_labels = {"kubernetes.io/metadata.name": src.namespace, **src.namespace_labels}
        in_namespace = selects(ns_sel, ns_labels)
    return in_namespace and (pod_sel is None or selects(pod_sel, src.labels))


def admitted(r: Rendered, target: dict[str, str], port: int | str, src: Source) -> bool:
    """Whether ``src`` may connect to ``port`` of a pod labelled ``target``."""
    policies = [p for p in r.find("NetworkPolicy") if selects(p["spec"]["podSelector"], target)]
    if not policies:
        return True  # not isolated
    for policy in policies:
        namespace = policy["metadata"]["namespace"]
        for rule in policy["spec"].get("ingress", []):
            if not any(p["port"] == port for p in rule["ports"]):
                continue
            if "from" not in rule or any(peer_admits(p, src, namespace) for p in rule["from"]):
                return True
    return False


def pod_labels(r: Rendered, kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = r.get(kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


SERVER = ("Deployment", "demo-kiqstack-server")
WORKER = ("Deployment", "demo-kiqstack-worker")
SCHEDULER = ("Deployment", "demo-kiqstack-scheduler")
NATS = ("StatefulSet", "demo-nats")
VALKEY = ("Deployment", "demo-valkey")

PROMETHEUS = Source({"app.kubernetes.io/name": "prometheus"}, "monitoring", {"name": "monitoring"})
KEDA = Source({"app": "keda-operator"}, "keda")
INTRUDER = Source({"app": "intruder"})  # same namespace, not of the release
ELSEWHERE = Source(RELEASE, "team-b")  # the release's label, but in another namespace
WEB = Source({"app": "web"}, "web", {"team": "web"})


def other_release(r: Rendered) -> Source:
    """A kiqstack server pod of another release in the same namespace: all labels alike but the
    instance."""
    return Source({**pod_labels(r, *SERVER), "app.kubernetes.io/instance": "other"})


def release_pods(r: Rendered) -> list[Source]:
    pods = [Source(pod_labels(r, *SERVER)), Source(pod_labels(r, *WORKER))]
    pods += [Source(pod_labels(r, *SCHEDULER))]
    pods += [Source(p["metadata"]["labels"]) for p in r.own() if p["kind"] == "Pod"]
    assert len(pods) >= 5  # server, worker, scheduler, at least two helm test pods
    return pods


def test_default_render_fences_every_component(defaults: Rendered) -> None:
    names = {p["metadata"]["name"]: p for p in defaults.find("NetworkPolicy")}
    targets = {
        "demo-kiqstack-server": SERVER,
        "demo-kiqstack-worker": WORKER,
        "demo-kiqstack-scheduler": SCHEDULER,
        "demo-kiqstack-nats": NATS,
        "demo-kiqstack-valkey": VALKEY,
    }
    assert set(names) == set(targets)
    for name, target in targets.items():
        policy = names[name]
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open
        # each selects its workload's pods (the subcharts' labels: nats-io/k8s, valkey-helm)
        assert selects(policy["spec"]["podSelector"], pod_labels(defaults, *target))
        others = [t for t in targets.values() if t != target]
        assert not any(
            selects(policy["spec"]["podSelector"], pod_labels(defaults, *t)) for t in others
        )


def test_nats_and_valkey_accept_only_release_pods(defaults: Rendered) -> None:
    nats, valkey = pod_labels(defaults, *NATS), pod_labels(defaults, *VALKEY)
    for src in release_pods(defaults):
        assert admitted(defaults, nats, 4222, src)
        assert admitted(defaults, valkey, 6379, src)
    for src in (INTRUDER, other_release(defaults), ELSEWHERE, PROMETHEUS, KEDA):
        assert not admitted(defaults, nats, 4222, src)
        assert not admitted(defaults, valkey, 6379, src)
    # JetStream cluster routes only between the NATS pods themselves
    assert admitted(defaults, nats, 6222, Source(nats))
    for src in [*release_pods(defaults), INTRUDER]:
        assert not admitted(defaults, nats, 6222, src)
    # ports nobody listed stay closed
    assert not admitted(defaults, nats, 7422, Source(pod_labels(defaults, *WORKER)))


def test_open_ports_by_default(defaults: Rendered) -> None:
    """API and metrics ports admit everyone while apiFrom/metricsFrom are empty."""
    for src in (INTRUDER, PROMETHEUS, WEB):
        assert admitted(defaults, pod_labels(defaults, *SERVER), "http", src)
        assert admitted(defaults, pod_labels(defaults, *SERVER), "http-metrics", src)
        assert admitted(defaults, pod_labels(defaults, *WORKER), "http-metrics", src)
        assert admitted(defaults, pod_labels(defaults, *SCHEDULER), "http-metrics", src)
        assert admitted(defaults, pod_labels(defaults, *NATS), 8222, src)
        assert admitted(defaults, pod_labels(defaults, *NATS), 7777, src)
        assert admitted(defaults, pod_labels(defaults, *VALKEY), 9121, src)
    # the worker and the scheduler serve nothing else
    assert not admitted(defaults, pod_labels(defaults, *WORKER), "http", INTRUDER)
    assert not admitted(defaults, pod_labels(defaults, *SCHEDULER), "http", INTRUDER)


def test_api_and_metrics_peers_are_kept_apart(rendered: dict[str, Rendered]) -> None:
    r = rendered["keda-metrics-from"]  # apiFrom: team=web namespaces, metricsFrom: monitoring
    server, worker = pod_labels(r, *SERVER), pod_labels(r, *WORKER)
    assert admitted(r, server, "http", WEB)
    assert not admitted(r, server, "http-metrics", WEB)
    assert admitted(r, server, "http-metrics", PROMETHEUS)
    assert not admitted(r, server, "http", PROMETHEUS)
    assert admitted(r, worker, "http-metrics", PROMETHEUS)
    assert not admitted(r, worker, "http-metrics", WEB)
    scheduler = pod_labels(r, *SCHEDULER)
    assert admitted(r, scheduler, "http-metrics", PROMETHEUS)
    assert not admitted(r, scheduler, "http-metrics", WEB)
    assert not admitted(r, scheduler, "http", WEB)
    for src in release_pods(r):  # the helm test pods reach the API
        assert admitted(r, server, "http", src)
    assert not admitted(r, server, "http", INTRUDER)
    # the named ports exist on the containers
    assert [p["name"] for p in container(r.get(*SERVER))["ports"]] == ["http", "http-metrics"]
    assert [p["name"] for p in container(r.get(*WORKER))["ports"]] == ["http-metrics"]
    assert [p["name"] for p in container(r.get(*SCHEDULER))["ports"]] == ["http-metrics"]


def test_keda_reaches_the_nats_monitor_port(rendered: dict[str, Rendered]) -> None:
    r = rendered["keda-metrics-from"]
    nats = pod_labels(r, *NATS)
    assert admitted(r, nats, 8222, KEDA)  # default kedaFrom: the namespace "keda"
    assert not admitted(r, nats, 7777, KEDA)
    assert not admitted(r, nats, 4222, KEDA)
    assert admitted(r, nats, 8222, PROMETHEUS)
    assert admitted(r, nats, 7777, PROMETHEUS)
    assert not admitted(r, nats, 8222, INTRUDER)
    # in hpa mode KEDA has no business there
    r = rendered["defaults"]
    assert not any(
        rule.get("from")
        == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]
        for p in r.find("NetworkPolicy")
        for rule in p["spec"]["ingress"]
    )


def test_policy_off(rendered: dict[str, Rendered]) -> None:
    r = rendered["policy-off"]
    assert not r.find("NetworkPolicy")
    assert "NetworkPolicies OFF" in r.notes
    assert admitted(r, pod_labels(r, *NATS), 4222, INTRUDER)  # what "off" means


def test_external_services_fenced_by_selector(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-fenced"]
    assert not [o for o in r.objects if "/charts/" in o["_source"]]
    ci_nats, ci_redis = {"app": "ci-nats"}, {"app": "ci-redis"}
    for src in release_pods(r)[:2]:
        assert admitted(r, ci_nats, 4222, src)
        assert admitted(r, ci_redis, 6379, src)
    for src in (INTRUDER, other_release(r), ELSEWHERE):
        assert not admitted(r, ci_nats, 4222, src)
        assert not admitted(r, ci_redis, 6379, src)
    assert admitted(r, ci_nats, 6222, Source(ci_nats))
    assert not admitted(r, ci_nats, 6222, INTRUDER)
    assert admitted(r, ci_nats, 8222, PROMETHEUS)
    assert admitted(r, ci_redis, 9121, PROMETHEUS)
    # other pods of the namespace are not selected by either policy
    assert admitted(r, {"app": "unrelated"}, 4222, INTRUDER)


def test_external_services_without_selector_get_no_policy(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-urls"]
    assert {p["metadata"]["name"] for p in r.find("NetworkPolicy")} == {
        "demo-kiqstack-server",
        "demo-kiqstack-worker",
        "demo-kiqstack-scheduler",
    }


def test_policies_follow_renamed_ports(chart: Path) -> None:
    r = render(
        chart,
        {
            "nats": {"config": {"nats": {"port": 4333}, "monitor": {"port": 8333}}},
            "valkey": {"service": {"port": 6380}},
        },
    )
    assert admitted(r, pod_labels(r, *NATS), 4333, release_pods(r)[0])
    assert not admitted(r, pod_labels(r, *NATS), 4333, INTRUDER)
    assert not admitted(r, pod_labels(r, *VALKEY), 6380, INTRUDER)
    assert admitted(r, pod_labels(r, *VALKEY), 6380, release_pods(r)[1])
    env = {e["name"]: e for e in container(r.get(*WORKER))["env"]}
    assert env["NATS_URL"]["value"].endswith("@demo-nats:4333")
    assert env["REDIS_URL"]["value"].endswith("@demo-valkey:6380/0")
