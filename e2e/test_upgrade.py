"""`helm upgrade` with a changed setting rolls the server and worker pods; the API keeps working.

Runs last (file order): it replaces every kiqstack pod. It toggles LOG_LEVEL between INFO and DEBUG,
so it can run again on the same release.
"""

from __future__ import annotations

import pytest

from e2e.support import ADD, Api, Kube, Target, helm_upgrade, ready_pods, settled_pods, wait_rollout

pytestmark = pytest.mark.e2e


def _log_level(kube: Kube, target: Target) -> str:
    data = kube.core.read_namespaced_config_map(target.fullname, target.namespace).data or {}
    return data.get("LOG_LEVEL", "INFO")


def _template_annotations(kube: Kube, target: Target, deployment: str) -> dict[str, str]:
    dep = kube.apps.read_namespaced_deployment(deployment, target.namespace)
    return dict(dep.spec.template.metadata.annotations or {})


@pytest.mark.timeout(900)
def test_helm_upgrade_with_a_changed_setting_rolls_the_pods(
    api: Api, kube: Kube, target: Target
) -> None:
    old_level = _log_level(kube, target)
    new_level = "DEBUG" if old_level != "DEBUG" else "INFO"
    before = {
        component: {p.metadata.uid for p in settled_pods(kube, target, component)}
        for component in ("server", "worker")
    }
    annotations_before = {
        d: _template_annotations(kube, target, d) for d in (target.server, target.worker)
    }

    helm_upgrade(target, f"config.logLevel={new_level}")

    assert _log_level(kube, target) == new_level
    for deployment, component in ((target.server, "server"), (target.worker, "worker")):
        wait_rollout(kube, target, deployment)
        assert _template_annotations(kube, target, deployment) != annotations_before[deployment], (
            f"{deployment}: the pod template did not change (checksum/config annotation?)"
        )
        after = {p.metadata.uid for p in ready_pods(kube, target, component)}
        assert after, f"no ready {component} pods after the upgrade"
        assert not before[component] & after, f"some {component} pods survived the upgrade"

    # The port-forward followed the new server pods; tasks still run end to end.
    result = api.wait_for(api.dispatch(ADD, 20, 22))
    assert result["status"] == "success"
    assert result["result"] == 42
