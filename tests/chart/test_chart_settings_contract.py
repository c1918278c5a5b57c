"""Contract between the chart and the app: the environment the chart renders loads in the app's own
settings loader, with the values intended.

Rendered with Helm 4 (helm_python), which keeps the numbers of values files as float64 and prints
whole numbers of 1,000,000 and more in exponent form unless the chart takes care ("1.2096e+06" made
the default install crash-loop with `DEAD_LETTER_MAX_AGE_SECONDS: Input should be a valid integer`).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings, load_settings
from tests.chart.chartlib import Rendered, container, render

pytestmark = pytest.mark.chart

_REF = re.compile(r"\$\((\w+)\)")


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def rendered_env(rendered: Rendered, component: str) -> dict[str, str]:
    """The environment of a component's container as the kubelet builds it from the render:
    envFrom (ConfigMap, Secret) first, then env (literal values with `$(VAR)` references, and
    secretKeyRef to Secrets of the same render; references to other Secrets are left out)."""
    deployment = rendered.get("Deployment", f"demo-kiqstack-{component}")
    spec = container(deployment)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(rendered.get("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(_secret_data(rendered.get("Secret", source["secretRef"]["name"])))
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = _REF.sub(lambda m: env.get(m.group(1), m.group(0)), entry["value"])
            continue
        ref = entry["valueFrom"].get("secretKeyRef")
        found = rendered.find("Secret", ref["name"]) if ref else []
        if found:
            env[entry["name"]] = _secret_data(found[0])[ref["key"]]
    return env


def load_rendered(
    rendered: Rendered, component: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, str]]:
    """Load the app's settings from exactly the rendered environment (nothing of this process')."""
    env = rendered_env(rendered, component)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(), env


@pytest.mark.parametrize("component", ["server", "worker"])
def test_default_values_load_in_the_app(
    chart: Path, component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, env = load_rendered(render(chart), component, monkeypatch)
    assert settings.run_mode.value == component
    # the chart's defaults (chart/values.yaml), as the app reads them
    assert settings.dead_letter_max_age_seconds == 1_209_600
    assert env["DEAD_LETTER_MAX_AGE_SECONDS"] == "1209600"
    assert settings.result_ttl_seconds == 86_400
    assert settings.max_payload_bytes == 524_288
    assert settings.ack_wait_seconds == 300
    assert settings.worker_concurrency == 16
    assert settings.log_format == "json"


LARGE = {
    "config": {
        "ackWaitSeconds": 3_600_000,
        "redeliveryDelaySeconds": 1.5,
        "resultTtlSeconds": 2_592_000,
        "maxPayloadBytes": 1_048_576,
        "shutdownDelaySeconds": 2.5,
        "idempotencyTtlSeconds": 2_592_000,
        "http": {"headerTimeoutSeconds": 2.5, "maxConnections": 100_000},
        "nats": {"deadLetterMaxAgeSeconds": 31_536_000},
        "worker": {"shutdownTimeout": 1_000_000, "concurrency": 1000},
        "extraEnv": {"BIG_NUMBER": 123_456_789, "RATIO": 0.25},
    }
}


@pytest.mark.parametrize("component", ["server", "worker"])
def test_large_and_fractional_values_load_as_intended(
    chart: Path, component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, env = load_rendered(render(chart, LARGE), component, monkeypatch)
    assert settings.ack_wait_seconds == 3_600_000
    assert settings.redelivery_delay_seconds == 1.5
    assert settings.result_ttl_seconds == 2_592_000
    assert settings.max_payload_bytes == 1_048_576
    assert settings.shutdown_delay_seconds == 2.5
    assert settings.dead_letter_max_age_seconds == 31_536_000
    assert settings.worker_shutdown_timeout == 1_000_000
    assert settings.worker_concurrency == 1000
    assert settings.idempotency_ttl_seconds == 2_592_000
    assert settings.http_header_timeout_seconds == 2.5
    assert settings.http_max_connections == 100_000
    # every number is a plain decimal string, whatever its size
    assert env["ACK_WAIT_SECONDS"] == "3600000"
    assert env["RESULT_TTL_SECONDS"] == "2592000"
    assert env["MAX_PAYLOAD_BYTES"] == "1048576"
    assert env["WORKER_SHUTDOWN_TIMEOUT"] == "1000000"
    assert env["IDEMPOTENCY_TTL_SECONDS"] == "2592000"
    assert env["REDELIVERY_DELAY_SECONDS"] == "1.5"
    assert env["BIG_NUMBER"] == "123456789"
    assert env["RATIO"] == "0.25"
    assert not [f"{k}={v}" for k, v in env.items() if re.fullmatch(r"[0-9.]+e[+-]?\d+", v)]


def test_a_pool_settings_load_in_the_app(chart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool's own WORKER_* entries win over the ConfigMap, at any size, as the app reads them."""
    pool = {
        "queues": ["cpu", "video"],
        "concurrency": 3,
        "processes": 2,
        "fetchBatch": 1,
        "shutdownTimeout": 1_000_000,
    }
    rendered = render(chart, {"workers": {"cpu": pool}})
    settings, env = load_rendered(rendered, "worker-cpu", monkeypatch)
    assert settings.run_mode.value == "worker"
    assert (settings.worker_concurrency, settings.worker_processes) == (3, 2)
    assert settings.worker_fetch_batch == 1
    assert settings.worker_shutdown_timeout == 1_000_000
    assert (env["WORKER_QUEUES"], env["WORKER_SHUTDOWN_TIMEOUT"]) == ("cpu,video", "1000000")
    # the default pool keeps config.worker.*
    settings, env = load_rendered(rendered, "worker", monkeypatch)
    assert (settings.worker_concurrency, settings.worker_shutdown_timeout) == (16, 30)
    assert env["WORKER_QUEUES"] == "default"
