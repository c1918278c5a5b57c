"""The upgrade guarantee of worker pools: a release installed with the chart before pools upgrades
without a delete and without losing queued tasks.

``golden/pre-pools.json`` holds what that chart rendered (commit 1146604) for values written
against it (``worker.*`` only): every object's name and, for the default render and every worker
object, the whole object. The current chart, given the same values, must render the same objects:
pool ``default`` keeps the worker's names, labels and (immutable) Deployment selector, and its pods
still serve the subject and consumer the queued tasks wait on. The only differences allowed are the
ones pools add on purpose, listed in :func:`normalize`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartlib import Rendered, clean, env_map, render

pytestmark = pytest.mark.chart

GOLDEN = json.loads((Path(__file__).parent / "golden" / "pre-pools.json").read_text())
SCENARIOS = GOLDEN["scenarios"]

# Environment the pools add to pool default's container (its own WORKER_* on top of the ConfigMap).
POOL_ENV = {
    "WORKER_QUEUES": "default",
    "WORKER_CONCURRENCY": "16",
    "WORKER_PROCESSES": "1",
    "WORKER_FETCH_BATCH": "16",
    "WORKER_SHUTDOWN_TIMEOUT": "30",
}
# Objects that did not exist before: the scheduler (on by default).
NEW_OBJECTS = {
    "Deployment/demo-kiqstack-scheduler",
    "NetworkPolicy/demo-kiqstack-scheduler",
    "PodMonitor/demo-kiqstack-scheduler",
}
# Settings added since (task lifecycle: delayed and periodic tasks), in the ConfigMap with defaults.
NEW_SETTINGS = {
    "NATS_SCHEDULE_SUBJECT": "kiqstack.schedules",
    "MAX_SCHEDULE_DELAY_SECONDS": "31622400",
    "SCHEDULER_INTERVAL_SECONDS": "30",
}
# Their contents change on purpose (alerts and panels by queue): compared by metadata only.
METADATA_ONLY = {"PrometheusRule/demo-kiqstack", "ConfigMap/demo-kiqstack-dashboard"}


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """A rendered object as the chart before pools would have rendered it: without the additions
    of pools (each checked here), and without what changes on every render (salted checksums,
    generated passwords)."""
    obj = copy.deepcopy(clean(obj))
    if obj["kind"] == "Secret":
        obj.pop("data", None)
    worker = obj["metadata"]["name"].endswith("-worker")
    labels = obj["metadata"]["labels"]
    if worker:
        assert labels.pop("kiqstack.io/pool") == "default"
    if _key(obj) in METADATA_ONLY:
        return {k: obj[k] for k in ("apiVersion", "kind", "metadata")}
    if _key(obj) == "ConfigMap/demo-kiqstack":
        assert {name: obj["data"].pop(name) for name in NEW_SETTINGS} == NEW_SETTINGS
    spec = obj.get("spec", {})
    template = spec.get("template")
    if template:
        template["metadata"].get("annotations", {}).pop("checksum/secret", None)
        # A hash of the ConfigMap, which holds the new settings: it changes (and rolls the pods).
        template["metadata"].get("annotations", {}).pop("checksum/config", None)
    if obj["kind"] == "Deployment" and worker:
        assert template["metadata"]["labels"].pop("kiqstack.io/pool") == "default"
        [c] = template["spec"]["containers"]
        env = env_map(obj)
        assert {name: env[name]["value"] for name in POOL_ENV} == POOL_ENV
        c["env"] = [e for e in c["env"] if e["name"] not in POOL_ENV]
    if obj["kind"] == "PodMonitor":
        assert spec.pop("podTargetLabels") == ["kiqstack.io/pool"]
    return obj


@pytest.fixture(scope="module")
def renders(chart: Path) -> dict[str, Rendered]:
    return {
        name: render(chart, s["values"], api_versions=s["api_versions"])
        for name, s in SCENARIOS.items()
    }


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_same_objects_as_before_pools(renders: dict[str, Rendered], scenario: str) -> None:
    now = {_key(o) for o in renders[scenario].own() if o["kind"] != "Pod"}
    before = set(SCENARIOS[scenario]["names"])
    assert before <= now, f"objects gone: {sorted(before - now)}"
    assert now - before <= NEW_OBJECTS, f"unexpected objects: {sorted(now - before - NEW_OBJECTS)}"
    assert "Deployment/demo-kiqstack-scheduler" in now


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_objects_unchanged_but_for_pool_additions(
    renders: dict[str, Rendered], scenario: str
) -> None:
    r = renders[scenario]
    golden = SCENARIOS[scenario]["objects"]
    assert golden, "the fixture has objects for every scenario"
    for before in golden:
        [now] = r.find(before["kind"], before["metadata"]["name"])
        before = copy.deepcopy(before)
        template = before.get("spec", {}).get("template")
        if template:
            template["metadata"].get("annotations", {}).pop("checksum/config", None)
        assert normalize(now) == before, _key(before)


def test_default_pool_keeps_selector_and_consumer(renders: dict[str, Rendered]) -> None:
    """The immutable selector, and the subject/consumer the queued tasks of the release wait on."""
    r = renders["keda-min0"]
    worker = r.get("Deployment", "demo-kiqstack-worker")
    assert worker["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kiqstack",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "worker",
    }
    data = r.get("ConfigMap", "demo-kiqstack")["data"]
    assert (data["NATS_SUBJECT"], data["NATS_CONSUMER"]) == ("kiqstack.tasks", "kiqstack_workers")
    assert env_map(worker)["WORKER_QUEUES"]["value"] == "default"
    [trigger] = [
        t
        for t in r.get("ScaledObject", "demo-kiqstack-worker")["spec"]["triggers"]
        if t["type"] == "nats-jetstream"
    ]
    assert trigger["metadata"]["consumer"] == "kiqstack_workers"
