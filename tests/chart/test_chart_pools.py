"""Worker pools (``workers.<name>`` over the ``worker`` defaults): one Deployment per pool with its
own autoscaler, PDB, NetworkPolicy and PodMonitor, its queues in ``WORKER_QUEUES``, KEDA triggers on
its queues' consumers, and the refusals of bad pools.

The scenarios ``pools`` (three pools: default/hpa, cpu/keda, reports/none) and friends are in
scenarios.py; they are also validated for Kubernetes 1.33/1.36 by test_chart_matrix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.chart.chartlib import KEDA_API, Rendered, container, env_map, render
from tests.chart.scenarios import SCENARIOS

pytestmark = pytest.mark.chart

POOLS = {
    # pool: (Deployment, component, queues)
    "default": ("demo-kiqstack-worker", "worker", ["default"]),
    "cpu": ("demo-kiqstack-worker-cpu", "worker-cpu", ["cpu", "video"]),
    "reports": ("demo-kiqstack-worker-reports", "worker-reports", ["reports"]),
}


def _selector(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kiqstack",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": component,
    }


def _pool_objects(r: Rendered, pool: str) -> list[dict[str, Any]]:
    return [o for o in r.own() if o["metadata"]["labels"].get("kiqstack.io/pool") == pool]


def test_one_deployment_per_pool_with_disjoint_selectors(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools"]
    deployments = {
        d["metadata"]["name"]: d for d in r.find("Deployment") if "/charts/" not in d["_source"]
    }
    assert set(deployments) == {
        "demo-kiqstack-server",
        "demo-kiqstack-scheduler",
        *(name for name, _, _ in POOLS.values()),
    }
    selectors = [d["spec"]["selector"]["matchLabels"] for d in deployments.values()]
    # no selector selects the pods of another Deployment
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selecting = [s for s in selectors if s.items() <= labels.items()]
        assert selecting == [dep["spec"]["selector"]["matchLabels"]], name
    for pool, (name, component, _) in POOLS.items():
        dep = deployments[name]
        assert dep["spec"]["selector"]["matchLabels"] == _selector(component)
        assert dep["metadata"]["labels"]["kiqstack.io/pool"] == pool
        assert dep["spec"]["template"]["metadata"]["labels"]["kiqstack.io/pool"] == pool
        assert container(dep)["name"] == "worker"
        assert env_map(dep)["RUN_MODE"]["value"] == "worker"
        # every object of the pool carries its label and is named after its Deployment
        for obj in _pool_objects(r, pool):
            assert obj["metadata"]["name"] == name, obj["kind"]
            assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == component


def test_each_pool_serves_its_queues_with_its_settings(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools"]
    data = r.get("ConfigMap", "demo-kiqstack")["data"]
    expected = {
        # pool: WORKER_QUEUES, CONCURRENCY, PROCESSES, FETCH_BATCH, SHUTDOWN_TIMEOUT
        "default": ("default", "16", "1", "16", "30"),
        "cpu": ("cpu,video", "2", "4", "1", "600"),
        "reports": ("reports", "16", "1", "16", "30"),
    }
    names = (
        "WORKER_QUEUES",
        "WORKER_CONCURRENCY",
        "WORKER_PROCESSES",
        "WORKER_FETCH_BATCH",
        "WORKER_SHUTDOWN_TIMEOUT",
    )
    for pool, values in expected.items():
        dep = r.get("Deployment", POOLS[pool][0])
        env = env_map(dep)
        assert tuple(env[n]["value"] for n in names) == values, pool
        # the ConfigMap keeps config.worker.*: the pools' env entries win over envFrom
        assert (data["WORKER_CONCURRENCY"], data["WORKER_SHUTDOWN_TIMEOUT"]) == ("16", "30")
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == int(values[4]) + 15, pool


def test_pools_inherit_and_override_the_worker_defaults(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools"]
    default, cpu, reports = (r.get("Deployment", POOLS[p][0]) for p in POOLS)
    # maps merge key by key: cpu sets requests.cpu, keeps worker's requests.memory and limits
    assert container(default)["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert container(cpu)["resources"] == {
        "requests": {"cpu": "2", "memory": "128Mi"},
        "limits": {"memory": "1Gi"},
    }
    spec = cpu["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "cpu"}
    assert spec["tolerations"] == [{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}]
    # the worker's spread constraint, with the pool's own selector filled in
    [tsc] = spec["topologySpreadConstraints"]
    assert tsc["labelSelector"]["matchLabels"] == _selector("worker-cpu")
    assert "nodeSelector" not in default["spec"]["template"]["spec"]
    # lists replace: reports sets [] over the worker's spread constraint
    spec = reports["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in spec
    assert spec["priorityClassName"] == "batch"
    assert reports["spec"]["template"]["metadata"]["labels"]["team"] == "finance"
    assert "team" not in default["spec"]["template"]["metadata"]["labels"]
    # the probes and security context come from worker for every pool
    for dep in (default, cpu, reports):
        c = container(dep)
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("scenario", ["pools", "pools-hpa-keda", "pools-old-style-keda"])
def test_one_autoscaler_per_pool(rendered: dict[str, Rendered], scenario: str) -> None:
    r = rendered[scenario]
    values = SCENARIOS[scenario][0]
    defaults_mode = values.get("worker", {}).get("autoscaling", {}).get("mode", "hpa")
    for pool_name, pool in values["workers"].items():
        name = POOLS.get(pool_name, (f"demo-kiqstack-worker-{pool_name}",))[0]
        mode = pool.get("autoscaling", {}).get("mode", defaults_mode)
        dep = r.get("Deployment", name)
        scalers = r.find("HorizontalPodAutoscaler", name) + r.find("ScaledObject", name)
        if mode == "none":
            assert not scalers
            assert dep["spec"]["replicas"] == pool["replicas"]
            continue
        [scaler] = scalers
        assert scaler["kind"] == {"hpa": "HorizontalPodAutoscaler", "keda": "ScaledObject"}[mode]
        assert "replicas" not in dep["spec"]
        assert scaler["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
    # never an HPA of ours next to a ScaledObject for the same Deployment
    hpas = {o["metadata"]["name"] for o in r.find("HorizontalPodAutoscaler")}
    scaled = {o["metadata"]["name"] for o in r.find("ScaledObject")}
    assert not hpas & scaled


def test_old_style_worker_values_reach_every_pool(rendered: dict[str, Rendered]) -> None:
    """`worker.autoscaling.mode=keda` (values written before pools) applies to new pools too."""
    r = rendered["pools-old-style-keda"]
    assert {o["metadata"]["name"] for o in r.find("ScaledObject")} == {
        "demo-kiqstack-worker",
        "demo-kiqstack-worker-cpu",
    }
    assert not r.find("HorizontalPodAutoscaler")


def test_keda_triggers_read_each_queue_consumer(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools"]
    so = r.get("ScaledObject", "demo-kiqstack-worker-cpu")
    spec = so["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 6)
    triggers = spec["triggers"]
    # targetCPUUtilizationPercentage: null in the pool removes the worker's cpu trigger
    assert [t["type"] for t in triggers] == ["nats-jetstream", "nats-jetstream"]
    assert [t["metadata"]["consumer"] for t in triggers] == [
        "kiqstack_workers_cpu",
        "kiqstack_workers_video",
    ]
    for t in triggers:
        md = t["metadata"]
        assert md["stream"] == "kiqstack_tasks"
        assert (
            md["natsServerMonitoringEndpoint"] == "demo-nats-headless.apps.svc.cluster.local:8222"
        )
        # scale to zero, and back up on the first task of either queue
        assert (md["lagThreshold"], md["activationLagThreshold"]) == ("4", "1")
    # the default pool keeps its HPA; pool default's queue keeps the old consumer
    assert not r.find("ScaledObject", "demo-kiqstack-worker")
    r.get("HorizontalPodAutoscaler", "demo-kiqstack-worker")


def test_keda_consumers_follow_renamed_consumer(chart: Path) -> None:
    values = {
        "config": {"nats": {"stream": "jobs", "consumer": "runners"}},
        "worker": {"autoscaling": {"mode": "keda"}},
        "workers": {"default": {"queues": ["default", "mail"]}},
    }
    r = render(chart, values, api_versions=[KEDA_API])
    triggers = r.get("ScaledObject", "demo-kiqstack-worker")["spec"]["triggers"]
    js = [t["metadata"] for t in triggers if t["type"] == "nats-jetstream"]
    assert [(m["stream"], m["consumer"]) for m in js] == [
        ("jobs", "runners"),
        ("jobs", "runners_mail"),
    ]
    assert [t["type"] for t in triggers][-1] == "cpu"  # the worker's cpu target stays


def test_pdb_per_pool(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools"]
    pdbs = {p["metadata"]["name"]: p for p in r.find("PodDisruptionBudget")}
    # default: hpa min 2; reports: 3 fixed replicas; cpu: may scale to zero, no PDB
    assert set(pdbs) == {
        "demo-kiqstack-server",
        "demo-kiqstack-worker",
        "demo-kiqstack-worker-reports",
    }
    for pool in ("default", "reports"):
        name, component, _ = POOLS[pool]
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == _selector(component)
        assert pdbs[name]["spec"]["maxUnavailable"] == 1


def test_pool_turns_its_pdb_off_alone(chart: Path) -> None:
    workers = {
        "default": {"autoscaling": {"minReplicas": 2}},
        "reports": {"replicas": 3, "autoscaling": {"mode": "none"}, "pdb": {"enabled": False}},
    }
    r = render(chart, {"workers": workers})
    assert {p["metadata"]["name"] for p in r.find("PodDisruptionBudget")} == {
        "demo-kiqstack-server",
        "demo-kiqstack-worker",
    }


def test_deep_merge_keeps_false_and_zero_and_null_unsets(chart: Path) -> None:
    """Pool keys win even when they are false or 0 (Sprig's merge would skip them); a null removes
    what the defaults set, as in Helm's own values."""
    values = {
        "worker": {
            "autoscaling": {"targetMemoryUtilizationPercentage": 80},
            "pdb": {"enabled": True},
        },
        "workers": {
            "default": {"autoscaling": {"targetCPUUtilizationPercentage": None}},
            "cpu": {"enabled": False},
            "zero": {
                "autoscaling": {"mode": "none"},
                "replicas": 0,
                "resources": {"requests": {"cpu": None}},
            },
        },
    }
    r = render(chart, values)
    hpa = r.get("HorizontalPodAutoscaler", "demo-kiqstack-worker")
    assert [m["containerResource"]["name"] for m in hpa["spec"]["metrics"]] == ["memory"]
    assert not r.find("Deployment", "demo-kiqstack-worker-cpu")  # enabled: false
    assert not _pool_objects(r, "cpu")
    zero = r.get("Deployment", "demo-kiqstack-worker-zero")
    assert zero["spec"]["replicas"] == 0
    assert container(zero)["resources"] == {
        "requests": {"memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert "WARNING: no running worker pool serves the queues cpu, zero" in r.notes


def test_set_flags_reach_the_pools(chart: Path) -> None:
    """`--set worker.…` (every pool) and `--set workers.<pool>.…` (one pool), as helm parses."""
    values: dict[str, Any] = {}
    for flag in (
        "worker.autoscaling.mode=none",
        "worker.replicas=2",
        "workers.cpu.queues={cpu,video}",
        "workers.cpu.replicas=5",
        "workers.cpu.concurrency=3",
    ):
        values = _merge(values, helm_python.parse_set_string(flag))
    r = render(chart, values)
    assert r.get("Deployment", "demo-kiqstack-worker")["spec"]["replicas"] == 2
    cpu = r.get("Deployment", "demo-kiqstack-worker-cpu")
    assert cpu["spec"]["replicas"] == 5
    env = env_map(cpu)
    assert (env["WORKER_QUEUES"]["value"], env["WORKER_CONCURRENCY"]["value"]) == ("cpu,video", "3")


def _merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_pool_without_queues_serves_its_name(chart: Path) -> None:
    r = render(chart, {"workers": {"mail": {}}})
    assert env_map(r.get("Deployment", "demo-kiqstack-worker-mail"))["WORKER_QUEUES"] == {
        "name": "WORKER_QUEUES",
        "value": "mail",
    }


def test_default_queue_can_move_to_another_pool(chart: Path) -> None:
    r = render(chart, {"workers": {"default": None, "all": {"queues": ["default", "cpu"]}}})
    assert not r.find("Deployment", "demo-kiqstack-worker")
    dep = r.get("Deployment", "demo-kiqstack-worker-all")
    assert env_map(dep)["WORKER_QUEUES"]["value"] == "default,cpu"
    r.get("Pod", "demo-kiqstack-test-task-roundtrip")  # kiqstack.ping still has a worker


def test_two_pools_may_share_a_queue(chart: Path) -> None:
    values = {"workers": {"spot": {"queues": ["default"], "nodeSelector": {"spot": "true"}}}}
    r = render(chart, values)
    for name in ("demo-kiqstack-worker", "demo-kiqstack-worker-spot"):
        assert env_map(r.get("Deployment", name))["WORKER_QUEUES"]["value"] == "default"
    assert "Queue default is served by pools default, spot: they share its consumer" in r.notes


def test_network_policy_per_pool(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools-everything"]
    monitoring = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    for pool, (name, component, _) in POOLS.items():
        np = r.get("NetworkPolicy", name)
        assert np["spec"]["podSelector"] == {"matchLabels": _selector(component)}
        assert np["metadata"]["labels"]["kiqstack.io/pool"] == pool
        [rule] = np["spec"]["ingress"]
        assert rule["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
        assert rule["from"] == [monitoring]
    # KEDA reaches the NATS monitor port because pool cpu uses keda (the default pool does not)
    nats = r.get("NetworkPolicy", "demo-kiqstack-nats")
    keda = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
    assert any(rule.get("from") == [keda] for rule in nats["spec"]["ingress"])


def test_pod_monitor_per_pool(rendered: dict[str, Rendered]) -> None:
    r = rendered["pools-everything"]
    for pool, (name, component, _) in POOLS.items():
        pm = r.get("PodMonitor", name)
        assert pm["spec"]["selector"]["matchLabels"] == _selector(component)
        assert pm["metadata"]["labels"]["kiqstack.io/pool"] == pool
        assert pm["spec"]["podTargetLabels"] == ["kiqstack.io/pool"]
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http-metrics"
    pm = r.get("PodMonitor", "demo-kiqstack-scheduler")
    assert pm["spec"]["selector"]["matchLabels"] == _selector("scheduler")


def test_alerts_by_queue_and_pool(rendered: dict[str, Rendered]) -> None:
    rule = rendered["pools-everything"].get("PrometheusRule", "demo-kiqstack")
    rules = rule["spec"]["groups"][0]["rules"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rules:
        by_name.setdefault(r["alert"], []).append(r)
    [backlog] = by_name["KiqstackQueueBacklogGrowing"]
    assert backlog["expr"].count("max by (queue) (kiqstack_queue_pending{") == 2
    assert "{{ $labels.queue }}" in backlog["annotations"]["description"]
    [failures] = by_name["KiqstackTaskFailureRatioHigh"]
    assert "sum by (queue) (rate(kiqstack_tasks_failed_total{" in failures["expr"]
    assert "sum by (queue) (rate(kiqstack_tasks_received_total{" in failures["expr"]
    # every pool's pods match the rules' pod selector
    assert 'pod=~"demo-kiqstack-worker-.*"' in failures["expr"]
    no_workers = {r["labels"]["pool"]: r for r in by_name["KiqstackNoReadyWorkers"]}
    assert set(no_workers) == set(POOLS)
    for pool, (name, _, queues) in POOLS.items():
        assert f'deployment="{name}"' in no_workers[pool]["expr"]
        assert ", ".join(queues) in no_workers[pool]["annotations"]["description"]
    [scheduler] = by_name["KiqstackNoReadyScheduler"]
    assert 'deployment="demo-kiqstack-scheduler"' in scheduler["expr"]


def test_dashboard_groups_by_queue(rendered: dict[str, Rendered]) -> None:
    cm = rendered["pools-everything"].get("ConfigMap", "demo-kiqstack-dashboard")
    dash = json.loads(cm["data"]["kiqstack.json"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["queue"]["query"]["query"].startswith("label_values(kiqstack_queue_pending")
    assert variables["queue"]["includeAll"] is True
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert (
        'max by (queue) (kiqstack_queue_pending{namespace="$namespace", queue=~"$queue"})' in exprs
    )
    for metric in ("dispatched", "succeeded", "failed"):
        assert any(f"sum by (queue) (rate(kiqstack_tasks_{metric}_total{{" in e for e in exprs)
    assert any("sum by (kiqstack_io_pool) (kiqstack_tasks_in_flight" in e for e in exprs)
    assert any('deployment=~".*-worker(-.+)?"' in e for e in exprs)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_notes_list_pools_and_queues(rendered: dict[str, Rendered]) -> None:
    notes = rendered["pools"].notes
    assert "Workers: 3 pools; a task runs on a pool that serves its queue" in notes
    lines = [line.split() for line in notes.splitlines() if line.startswith("  ")]
    rows = {words[0]: " ".join(words[1:]) for words in lines if words and words[0] in POOLS}
    assert rows["cpu"].startswith(
        "queues cpu, video KEDA ScaledObject demo-kiqstack-worker-cpu (0-6"
    )
    assert rows["default"].startswith("queues default HPA demo-kiqstack-worker (2-10 replicas)")
    assert rows["reports"] == "queues reports 3 fixed replicas (demo-kiqstack-worker-reports)"
    assert "kubectl -n apps get scaledobject,hpa -w" in notes
    assert "WARNING: no running worker pool" not in notes


def test_worker_only_release_for_other_queues_is_warned(chart: Path) -> None:
    values = {"server": {"enabled": False}, "workers": {"default": None, "gpu": {}}}
    r = render(chart, values)
    assert [d["metadata"]["name"] for d in r.own() if d["kind"] == "Deployment"] == [
        "demo-kiqstack-scheduler",
        "demo-kiqstack-worker-gpu",
    ]
    assert 'WARNING: no worker pool of this release serves the queue "default"' in r.notes
