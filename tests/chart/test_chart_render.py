"""Default render of the chart: objects, wiring, security, probes, checksums."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.config import Settings
from tests.chart.chartlib import (
    CHART_DIR,
    Rendered,
    container,
    env_map,
    render,
    validate_objects,
)

pytestmark = pytest.mark.chart

DEFAULT_OBJECTS = [
    "ConfigMap/demo-kiqstack",
    "Deployment/demo-kiqstack-scheduler",
    "Deployment/demo-kiqstack-server",
    "Deployment/demo-kiqstack-worker",
    "HorizontalPodAutoscaler/demo-kiqstack-worker",
    "NetworkPolicy/demo-kiqstack-nats",
    "NetworkPolicy/demo-kiqstack-scheduler",
    "NetworkPolicy/demo-kiqstack-server",
    "NetworkPolicy/demo-kiqstack-valkey",
    "NetworkPolicy/demo-kiqstack-worker",
    "Pod/demo-kiqstack-test-auth-required",
    "Pod/demo-kiqstack-test-readyz",
    "Pod/demo-kiqstack-test-task-roundtrip",
    "PodDisruptionBudget/demo-kiqstack-server",
    "Secret/demo-nats-auth",
    "Secret/demo-valkey-users",
    "Service/demo-kiqstack-server",
    "ServiceAccount/demo-kiqstack",
]
# rendered by the stand-in subcharts (see chartlib)
STANDIN_OBJECTS = [
    "ConfigMap/demo-nats-config",
    "Deployment/demo-valkey",
    "Service/demo-nats",
    "Service/demo-nats-headless",
    "Service/demo-valkey",
    "StatefulSet/demo-nats",
]


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "kiqstack"
    assert meta["version"] == "0.1.0"
    assert meta["appVersion"] == "0.1.0"
    assert meta["kubeVersion"] == ">=1.27.0-0"
    deps = {d["name"]: d for d in meta["dependencies"]}
    assert deps["nats"] == {
        "name": "nats",
        "version": "2.14.2",
        "repository": "https://nats-io.github.io/k8s/helm/charts/",
        "condition": "nats.enabled",
    }
    assert deps["valkey"] == {
        "name": "valkey",
        "version": "0.11.0",
        "repository": "https://valkey.io/valkey-helm/",
        "condition": "valkey.enabled",
    }
    # no hand-written lock file (it would not match Helm's digest), no vendored charts
    assert not (CHART_DIR / "Chart.lock").exists()


def test_default_objects(defaults: Rendered) -> None:
    own = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in defaults.own())
    assert own == DEFAULT_OBJECTS
    assert sorted(set(defaults.names()) - set(own)) == STANDIN_OBJECTS
    assert validate_objects(defaults) == len(DEFAULT_OBJECTS) + len(STANDIN_OBJECTS)


ROLES = ("server", "worker", "scheduler")


def test_run_mode_per_deployment(defaults: Rendered) -> None:
    for component in ROLES:
        dep = defaults.get("Deployment", f"demo-kiqstack-{component}")
        assert env_map(dep)["RUN_MODE"] == {"name": "RUN_MODE", "value": component}
        assert container(dep)["name"] == component
        assert container(dep)["image"] == "kiqstack:0.1.0"
        assert container(dep)["imagePullPolicy"] == "IfNotPresent"


def test_urls_point_at_subchart_services(defaults: Rendered) -> None:
    # with credentials from Secrets, expanded by the kubelet ($(VAR) of earlier env entries)
    env = env_map(defaults.get("Deployment", "demo-kiqstack-worker"))
    assert (
        env["NATS_URL"]["value"]
        == "nats://$(KIQSTACK_NATS_USER):$(KIQSTACK_NATS_PASSWORD)@demo-nats:4222"
    )
    assert (
        env["REDIS_URL"]["value"] == "redis://default:$(KIQSTACK_REDIS_PASSWORD)@demo-valkey:6379/0"
    )
    # the names exist as Services rendered by the (stand-in) subcharts
    defaults.get("Service", "demo-nats")
    defaults.get("Service", "demo-valkey")


def _contract_settings() -> list[str]:
    """The variables of the Settings table of docs/contract.md, in table order."""
    contract = (CHART_DIR.parent / "docs" / "contract.md").read_text()
    settings = contract.split("## Settings")[1].split("\n## ")[0]
    return [line.split("`")[1] for line in settings.splitlines() if line.startswith("| `")]


# Settings docs/contract.md already lists for the app side of issues 12/13 (section "Still open
# after worker pools"): the chart sets them; each stops being pending once app/config.py has it.
CONTRACT_AHEAD_OF_APP = {"WORKER_QUEUES"}


def test_contract_settings_table_is_the_app_settings() -> None:
    names = _contract_settings()
    assert len(names) == len(set(names)), "a variable is listed twice"
    app = {name.upper() for name in Settings.model_fields}
    pending = CONTRACT_AHEAD_OF_APP - app
    assert pending <= set(names)
    assert set(names) - pending == app


# The URLs and the token come from Secrets (test_chart_secrets), by secretKeyRef env entries.
FROM_SECRETS = {"NATS_URL", "REDIS_URL", "API_TOKEN"}


def test_configmap_maps_every_contract_setting(chart: Path) -> None:
    """Every row of the table is accounted for: in the ConfigMap, per Deployment, or from a Secret;
    the *_FILE variants are for secrets mounted as files, which the chart never sets (both a
    variable and its file set make the app refuse to start)."""
    rendered = render(chart, {"apiToken": "t0ken"})
    data = rendered.get("ConfigMap", "demo-kiqstack")["data"]
    envs = [env_map(rendered.get("Deployment", f"demo-kiqstack-{c}")) for c in ROLES]
    names = _contract_settings()
    assert len(names) > 30
    for name in names:
        if name == "RUN_MODE":
            assert name not in data
            assert [env[name]["value"] for env in envs] == list(ROLES)
        elif name == "WORKER_QUEUES":  # per pool, on the pool's pods only
            assert name not in data
            assert [name in env for env in envs] == [False, True, False]
            assert envs[1][name]["value"] == "default"
        elif name in FROM_SECRETS:
            assert name not in data, f"{name} must not be in the ConfigMap"
            assert all(name in env for env in envs), f"{name} is not in the Deployments' env"
        elif name.endswith("_FILE"):
            assert name.removesuffix("_FILE") in FROM_SECRETS
            assert name not in data
            assert not any(name in env for env in envs), f"the chart sets {name}"
        else:
            assert name in data, f"{name} from docs/contract.md is not in the ConfigMap"
    assert set(data) <= set(names), "the ConfigMap sets a variable docs/contract.md lacks"
    assert all(isinstance(v, str) for v in data.values())
    assert data["RELOAD"] == "false"
    assert data["NATS_STREAM"] == "kiqstack_tasks"
    assert data["NATS_CONSUMER"] == "kiqstack_workers"


def test_deployments_use_configmap(defaults: Rendered) -> None:
    for component in ROLES:
        dep = defaults.get("Deployment", f"demo-kiqstack-{component}")
        assert container(dep)["envFrom"] == [{"configMapRef": {"name": "demo-kiqstack"}}]


def test_ports_and_service(defaults: Rendered) -> None:
    server = container(defaults.get("Deployment", "demo-kiqstack-server"))
    worker = container(defaults.get("Deployment", "demo-kiqstack-worker"))
    metrics = {"name": "http-metrics", "containerPort": 9000, "protocol": "TCP"}
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}, metrics]
    assert worker["ports"] == [metrics]
    data = defaults.get("ConfigMap", "demo-kiqstack")["data"]
    assert (data["PORT"], data["METRICS_PORT"]) == ("8000", "9000")
    svc = defaults.get("Service", "demo-kiqstack-server")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "http-metrics", "port": 9000, "targetPort": "http-metrics", "protocol": "TCP"},
    ]
    server_dep = defaults.get("Deployment", "demo-kiqstack-server")
    assert svc["spec"]["selector"] == server_dep["spec"]["selector"]["matchLabels"]


def test_probes(defaults: Rendered) -> None:
    for component in ROLES:
        port = "http-metrics"  # every role serves /livez and /readyz on METRICS_PORT
        c = container(defaults.get("Deployment", f"demo-kiqstack-{component}"))
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": port}


def test_security_contexts(defaults: Rendered) -> None:
    pods = [o for o in defaults.own() if o["kind"] in ("Deployment", "Pod")]
    assert len(pods) == 6
    for obj in pods:
        spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
        assert spec["automountServiceAccountToken"] is False
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] == 10001
        assert psc["runAsGroup"] == 10001
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True
            assert "limits" in c["resources"]
            assert "requests" in c["resources"]
    for component in ROLES:
        spec = defaults.get("Deployment", f"demo-kiqstack-{component}")["spec"]["template"]["spec"]
        assert {"name": "tmp", "mountPath": "/tmp"} in spec["containers"][0]["volumeMounts"]
        assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
        assert spec["serviceAccountName"] == "demo-kiqstack"
    sa = defaults.get("ServiceAccount", "demo-kiqstack")
    assert sa["automountServiceAccountToken"] is False


def test_selectors_are_disjoint_and_stable(defaults: Rendered) -> None:
    selectors = {}
    for component in ROLES:
        dep = defaults.get("Deployment", f"demo-kiqstack-{component}")
        sel = dep["spec"]["selector"]["matchLabels"]
        assert sel == {
            "app.kubernetes.io/name": "kiqstack",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": component,
        }
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items()
        for key in ("app.kubernetes.io/part-of", "app.kubernetes.io/version", "helm.sh/chart"):
            assert key in dep["metadata"]["labels"]
        selectors[component] = sel
    assert len({tuple(sorted(s.items())) for s in selectors.values()}) == len(ROLES)


def test_worker_hpa_and_no_replicas(defaults: Rendered) -> None:
    worker = defaults.get("Deployment", "demo-kiqstack-worker")
    assert "replicas" not in worker["spec"]
    hpa = defaults.get("HorizontalPodAutoscaler", "demo-kiqstack-worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo-kiqstack-worker",
    }
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["maxReplicas"] == 10
    [metric] = hpa["spec"]["metrics"]
    assert metric["containerResource"]["name"] == "cpu"
    assert metric["containerResource"]["container"] == "worker"
    assert metric["containerResource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 70,
    }
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert not defaults.find("ScaledObject")


def test_worker_grace_period(defaults: Rendered, chart: Path) -> None:
    spec = defaults.get("Deployment", "demo-kiqstack-worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 30 + 15
    r = render(
        chart,
        {
            "config": {"worker": {"shutdownTimeout": 120}},
            "worker": {"terminationGraceMarginSeconds": 5},
        },
    )
    spec = r.get("Deployment", "demo-kiqstack-worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 125
    assert r.get("ConfigMap", "demo-kiqstack")["data"]["WORKER_SHUTDOWN_TIMEOUT"] == "120"


def test_topology_spread_gets_selector(defaults: Rendered) -> None:
    spec = defaults.get("Deployment", "demo-kiqstack-worker")["spec"]["template"]["spec"]
    [tsc] = spec["topologySpreadConstraints"]
    assert tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert tsc["whenUnsatisfiable"] == "ScheduleAnyway"


def test_checksum_config_changes_with_settings(defaults: Rendered, chart: Path) -> None:
    def checksums(r: Rendered) -> dict[str, str]:
        return {
            c: r.get("Deployment", f"demo-kiqstack-{c}")["spec"]["template"]["metadata"][
                "annotations"
            ]["checksum/config"]
            for c in ("server", "worker")
        }

    base = checksums(defaults)
    assert base == checksums(render(chart))  # deterministic
    changed = checksums(render(chart, {"config": {"logLevel": "DEBUG"}}))
    for component in ("server", "worker"):
        assert changed[component] != base[component]
    # no chart Secret by default (the subchart logins have Secrets of their own): no checksum/secret
    ann = defaults.get("Deployment", "demo-kiqstack-server")["spec"]["template"]["metadata"]
    assert "checksum/secret" not in ann["annotations"]


def test_helm_test_pods(defaults: Rendered) -> None:
    tests = [o for o in defaults.own() if o["kind"] == "Pod"]
    assert len(tests) == 3
    for pod in tests:
        ann = pod["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "test"
        # Not hook-succeeded: `helm test --logs` (Helm 3.17) reads the logs after the pod succeeded.
        assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation"
        c = pod["spec"]["containers"][0]
        assert c["image"] == "kiqstack:0.1.0"  # the app image, already loaded into kind
        assert c["command"] == ["python", "-c"]
        compile(c["args"][0], pod["metadata"]["name"], "exec")  # valid Python
        assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"  # NetworkPolicy
    for name in ("readyz", "task-roundtrip"):
        env = {
            e["name"]: e
            for e in defaults.get("Pod", f"demo-kiqstack-test-{name}")["spec"]["containers"][0][
                "env"
            ]
        }
        assert env["BASE_URL"]["value"] == "http://demo-kiqstack-server.apps.svc:8000"
    roundtrip = defaults.get("Pod", "demo-kiqstack-test-task-roundtrip")
    script = roundtrip["spec"]["containers"][0]["args"][0]
    # the built-in task: the example tasks are opt-in
    assert "/tasks/kiqstack.ping?wait=30" in script
    assert 'result.get("result") == "pong"' in script
    assert "app.tasks.example" not in script
    assert "API_TOKEN" not in {e["name"] for e in roundtrip["spec"]["containers"][0]["env"]}
    assert (
        "/readyz"
        in defaults.get("Pod", "demo-kiqstack-test-readyz")["spec"]["containers"][0]["args"][0]
    )


def test_notes(defaults: Rendered) -> None:
    assert "port-forward svc/demo-kiqstack-server" in defaults.notes
    assert "/tasks/kiqstack.ping?wait=30" in defaults.notes
    assert "helm test demo" in defaults.notes
    assert "login in Secret demo-nats-auth" in defaults.notes
    assert "password in Secret demo-valkey-users" in defaults.notes
    assert "NetworkPolicies on" in defaults.notes


def test_extra_volumes_mount_a_secret_for_the_file_settings(chart: Path) -> None:
    """``*_FILE`` settings need a file in the pod: each component takes extra volumes and mounts."""
    volume = {"name": "kiq-secrets", "secret": {"secretName": "my-kiq-secrets"}}
    mount = {"name": "kiq-secrets", "mountPath": "/var/run/kiq", "readOnly": True}
    token_file = {"name": "API_TOKEN_FILE", "value": "/var/run/kiq/token"}
    component = {"extraVolumes": [volume], "extraVolumeMounts": [mount], "extraEnv": [token_file]}
    values = {
        "server": component,
        "worker": component,
        "scheduler": component,
        "workers": {"cpu": {"queues": ["cpu"]}},
    }
    rendered = render(chart, values)
    names = [
        "demo-kiqstack-server",
        "demo-kiqstack-worker",
        "demo-kiqstack-worker-cpu",
        "demo-kiqstack-scheduler",
    ]
    for name in names:
        deployment = rendered.get("Deployment", name)
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert volume in volumes, name
        assert {v["name"] for v in volumes} == {"tmp", "kiq-secrets"}, name
        assert mount in container(deployment)["volumeMounts"], name
        assert env_map(deployment)["API_TOKEN_FILE"]["value"] == "/var/run/kiq/token", name
    assert validate_objects(rendered) > 0
    defaults = render(chart)
    for name in ("demo-kiqstack-server", "demo-kiqstack-worker"):
        spec = defaults.get("Deployment", name)["spec"]["template"]["spec"]
        assert [v["name"] for v in spec["volumes"]] == ["tmp"]
