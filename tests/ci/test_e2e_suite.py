"""The e2e suite collects, is marked, and skips cleanly (never passes) without a cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ci.conftest import ROOT, load_yaml

# Every behaviour the issue asks the suite to prove, by test name.
REQUIRED_TESTS = [
    "test_add_round_trip",
    "test_failing_task_reports_its_error",
    "test_burst_of_500_tasks_all_complete",
    "test_worker_pod_deleted_mid_burst_loses_nothing[graceful]",
    "test_worker_pod_deleted_mid_burst_loses_nothing[forced]",
    "test_rollout_restart_of_workers_mid_burst_loses_nothing",
    "test_worker_hpa_targets_the_worker_deployment",
    "test_worker_hpa_reports_current_metrics",
    "test_server_metrics_through_the_service",
    "test_worker_metrics_on_every_worker_pod",
    "test_queue_depth_moves_during_a_burst",
    "test_helm_upgrade_with_a_changed_setting_rolls_the_pods",
    "test_metrics_api_reports_worker_pods",
    "test_tasks_as_long_as_ack_wait_run_once",
    "test_nats_restarted_without_its_data_new_tasks_succeed",
    "test_every_log_line_of_every_kiqstack_pod_is_one_json_object",
    "test_release_pods_reach_nats_and_valkey[server]",
    "test_nats_and_valkey_refuse_clients_without_credentials",
    "test_pods_outside_the_release_cannot_reach_nats_or_valkey[same-namespace]",
    "test_pods_outside_the_release_cannot_reach_nats_or_valkey[other-namespace]",
    "test_api_and_metrics_ports_admit_what_the_values_allow",
    "test_slowloris_clients_are_cut_off_and_livez_keeps_answering",
    "test_invoice_total_error_is_the_tasks_result",
]

# Scripts of the e2e suite: the shared kind / existing-cluster runner and the CI cluster's.
SCRIPTS = ["e2e/run.sh", "e2e/cluster/cluster.sh", "e2e/cluster/ci.sh"]


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _no_cluster_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2E_")}
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    env["HOME"] = str(tmp_path)  # no ~/.kube/config either
    env.update(extra)
    return env


def test_collect_only_collects_the_whole_suite() -> None:
    done = _pytest("--collect-only", "-q", "e2e/")
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    names = {line.split("::", 1)[1] for line in collected}
    missing = [t for t in REQUIRED_TESTS if t not in names]
    assert not missing, f"not collected: {missing}\n{done.stdout}"
    assert re.search(rf"\b{len(collected)} tests collected", done.stdout)


def _collected_modules(env: dict[str, str]) -> list[str]:
    done = _pytest("--collect-only", "-q", "e2e/", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    modules: list[str] = []
    for line in done.stdout.splitlines():
        module = line.split("::", 1)[0]
        if "::" in line and module not in modules:
            modules.append(module)
    return modules


def test_e2e_order_reverse_runs_the_modules_backwards(tmp_path: Path) -> None:
    forward = _collected_modules(_no_cluster_env(tmp_path))
    assert forward == sorted(forward)
    assert _collected_modules(_no_cluster_env(tmp_path, E2E_ORDER="reverse")) == forward[::-1]
    done = _pytest("--collect-only", "-q", "e2e/", env=_no_cluster_env(tmp_path, E2E_ORDER="x"))
    assert done.returncode != 0
    assert "E2E_ORDER must be forward or reverse" in done.stdout + done.stderr


def test_every_e2e_test_carries_the_marker() -> None:
    done = _pytest("--collect-only", "-q", "-m", "not e2e", "e2e/")
    assert re.search(r"0 selected|no tests collected", done.stdout + done.stderr), done.stdout
    assert done.returncode == 5, "some e2e test is not marked `e2e`"


def test_without_a_cluster_everything_is_skipped_with_the_reason(tmp_path: Path) -> None:
    done = _pytest("e2e/", "-rs", "-q", env=_no_cluster_env(tmp_path))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert re.search(r"^\d+ skipped in", out.splitlines()[-1]), out
    summary = out.splitlines()[-1]
    assert "passed" not in summary
    assert "failed" not in summary
    assert "e2e skipped: no Kubernetes cluster configured" in out


def test_e2e_require_turns_the_skip_into_a_failure(tmp_path: Path) -> None:
    done = _pytest("e2e/test_api.py", "-q", env=_no_cluster_env(tmp_path, E2E_REQUIRE="1"))
    assert done.returncode == 1, done.stdout
    assert "E2E_REQUIRE=1 but no Kubernetes cluster configured" in done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script: str) -> None:
    done = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(
        [shellcheck, script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


def test_run_script_and_make_agree_on_names() -> None:
    script = (ROOT / "e2e" / "run.sh").read_text()
    chart = load_yaml(ROOT / "chart" / "Chart.yaml")
    kind_config = load_yaml(ROOT / "e2e" / "kind-config.yaml")
    assert f'KIND_CLUSTER="${{KIND_CLUSTER:-{kind_config["name"]}}}"' in script
    assert f"KIND_CLUSTER ?= {kind_config['name']}" in (ROOT / "mk" / "e2e.mk").read_text()
    makefiles = "".join(p.read_text() for p in (ROOT / "mk").glob("*.mk"))
    assert re.search(r"^dev: chart-deps\b", makefiles, re.MULTILINE)
    for dep in chart["dependencies"]:
        assert dep["repository"] in script, f"run.sh does not add the {dep['name']} repository"
        assert dep["repository"] in makefiles, f"`make chart-deps` does not add {dep['name']}"
    assert 'kind) E2E_VALUES="${E2E_VALUES:-e2e/values.yaml}"' in script
    assert 'existing) E2E_VALUES="${E2E_VALUES:-e2e/existing-values.yaml}"' in script
    assert "--values e2e/harness/values.yaml" in script
    assert '--values "$E2E_VALUES" --values e2e/example-values.yaml' in script
    # kind builds the example task package's image FROM the kiqstack image it just built
    assert '--build-arg KIQSTACK_IMAGE="${E2E_BASE_IMAGE}:${E2E_TAG}" examples/acme-tasks' in script
    ci = (ROOT / "e2e" / "cluster" / "ci.sh").read_text()
    assert "make example-image " in ci
    assert "KEEP_CLUSTER" in script
    assert re.search(r"^e2e: .*\n\tE2E_CLUSTER=kind ", makefiles, re.MULTILINE)
    assert re.search(r"^e2e-existing: .*\n\tE2E_CLUSTER=existing ", makefiles, re.MULTILINE)


def test_harness_hands_credentials_to_the_release_through_a_secret() -> None:
    """The harness's NATS and Valkey require credentials; the release reads its URLs from the
    Secret run.sh creates, named in e2e/harness/values.yaml, and the subcharts are off there."""
    script = (ROOT / "e2e" / "run.sh").read_text()
    values = load_yaml(ROOT / "e2e" / "harness" / "values.yaml")
    assert values["nats"] == {"enabled": False}
    assert values["valkey"] == {"enabled": False}
    secret = values["externalNats"]["existingSecret"]
    assert values["externalRedis"]["existingSecret"] == secret
    assert f'HARNESS_URLS_SECRET="{secret}"' in script
    assert "nats://kiqstack:${nats_password}@" in script
    assert "redis://:${valkey_password}@" in script
    nats = (ROOT / "e2e" / "harness" / "nats.yaml").read_text()
    valkey = (ROOT / "e2e" / "harness" / "valkey.yaml").read_text()
    assert "password: $NATS_PASSWORD" in nats
    assert "--requirepass, $(VALKEY_PASSWORD)" in valkey


def test_kind_node_image_is_pinned_to_the_kind_release_default() -> None:
    """kind v0.32.0 `pkg/apis/config/defaults/image.go`."""
    digest = "3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
    expected = f"kindest/node:v1.36.1@sha256:{digest}"
    config = load_yaml(ROOT / "e2e" / "kind-config.yaml")
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker"]
    assert all(n["image"] == expected for n in config["nodes"])


@pytest.mark.parametrize(
    "path",
    [
        "e2e/harness/nats.yaml",
        "e2e/harness/valkey.yaml",
        "e2e/cluster/metrics-server.yaml",
        "e2e/cluster/kube-network-policies.yaml",
    ],
)
def test_manifests_of_the_harness_and_the_ci_cluster_are_valid(path: str) -> None:
    """The manifests e2e/run.sh and e2e/cluster/cluster.sh apply, placeholders filled in, are
    valid objects of the Kubernetes version the CI cluster runs (strict: no unknown fields)."""
    import kubernetes_validate

    text = (ROOT / path).read_text()
    for placeholder, value in {
        "@NATS_IMAGE@": "nats:2.14.2-alpine",
        "@VALKEY_IMAGE@": "valkey/valkey:9.1.1",
        "@IMAGE@": "metrics-server:v0.8.0",
        "@KUBELET_PORT@": "10250",
        "@QUEUE@": "98",
        "@METRICS_ADDRESS@": "127.0.0.1:41281",
    }.items():
        text = text.replace(placeholder, value)
    assert not re.search(r"@[A-Z_]+@", text), "an unknown placeholder is left"
    objects = [o for o in yaml.safe_load_all(text) if o]
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, "1.36", strict=True)
