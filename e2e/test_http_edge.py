"""The API edge on the cluster: slowloris clients are cut off while /livez keeps answering.

A probe pod in the release's namespace (not one of the release's pods; the API port admits every
source by default) opens 90 requests to the server Service whose headers never end, one more byte
a second, the way the security review held 90 connections open for 45 s. The server must close every
one of them (HTTP_HEADER_TIMEOUT_SECONDS), and /livez on the metrics port must keep answering
meanwhile.
"""

from __future__ import annotations

import pytest

from e2e.probes import ProbePods, check
from e2e.support import Api, Kube, Target, metric_sum, ready_pods, scrape_pod, settled_pods

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 90
CLOSED_BY_HEADER_TIMEOUT = "kiqstack_http_connections_closed_total"


def _header_timeouts(kube: Kube, target: Target, metrics_port: int) -> float:
    return sum(
        metric_sum(
            scrape_pod(kube, target, pod.metadata.name, metrics_port),
            CLOSED_BY_HEADER_TIMEOUT,
            reason="header_timeout",
        )
        for pod in ready_pods(kube, target, "server")
    )


@pytest.mark.timeout(600)
def test_slowloris_clients_are_cut_off_and_livez_keeps_answering(
    api: Api, kube: Kube, target: Target, probe_pods: ProbePods
) -> None:
    config = kube.core.read_namespaced_config_map(target.fullname, target.namespace).data or {}
    header_timeout = float(config.get("HTTP_HEADER_TIMEOUT_SECONDS", "10"))
    service = kube.core.read_namespaced_service(target.server, target.namespace)
    ports = {p.name: p.port for p in service.spec.ports}
    host = f"{target.server}.{target.namespace}.svc"
    pod = probe_pods.pod("e2e-slowloris")
    settled_pods(kube, target, "server")  # every server pod counts, none is on its way
    before = _header_timeouts(kube, target, ports["http-metrics"])

    give_up = header_timeout + 60
    result = check(
        target,
        target.namespace,
        pod,
        "slowloris",
        timeout=give_up + 120,
        host=host,
        port=ports["http"],
        livez_host=host,
        livez_port=ports["http-metrics"],
        connections=SLOW_CLIENTS,
        give_up=give_up,
    )

    assert result["opened"] == SLOW_CLIENTS, result
    assert result["still_open"] == 0, f"slow clients still connected after {give_up}s: {result}"
    for answer in result["answers"]:
        assert answer.startswith("HTTP/1.1 408 ") or answer == "closed", result
    assert set(result["livez"]) == {"200"}, f"/livez on the metrics port failed meanwhile: {result}"
    assert sum(result["livez"].values()) >= 3, result
    # the servers counted them as header timeouts, and the API still serves
    after = _header_timeouts(kube, target, ports["http-metrics"])
    assert after - before >= SLOW_CLIENTS, (before, after)
    assert api.get("/livez").status_code == 200
