"""With LOG_FORMAT=json (the chart's default), every log line of every kiqstack pod is one JSON
object: the server's, the worker's and those of the libraries they run (taskiq, uvicorn), failing
tasks and their tracebacks included."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.support import ADD, RISKY, Api, Kube, Target, kiqstack_pods

pytestmark = pytest.mark.e2e


def _logs(kube: Kube, target: Target, pod: str, container: str, previous: bool) -> str | None:
    try:
        text: str = kube.core.read_namespaced_pod_log(
            pod, target.namespace, container=container, previous=previous
        )
    except ApiException as exc:
        if previous and exc.status == 400:  # no earlier container
            return None
        raise
    return text


def test_every_log_line_of_every_kiqstack_pod_is_one_json_object(
    api: Api, kube: Kube, target: Target
) -> None:
    data = kube.core.read_namespaced_config_map(target.fullname, target.namespace).data or {}
    assert data.get("LOG_FORMAT") == "json", "the release must log JSON (chart default logFormat)"
    # a failing task (its error and traceback) and a good one, on the workers
    assert api.wait_for(api.dispatch(RISKY))["status"] == "error"
    assert api.wait_for(api.dispatch(ADD, 1, 1))["result"] == 2

    lines: dict[str, int] = {}
    problems: list[str] = []
    for pod in kiqstack_pods(kube, target):
        component = pod.metadata.labels["app.kubernetes.io/component"]
        for container in pod.spec.containers:
            for previous in (False, True):
                text = _logs(kube, target, pod.metadata.name, container.name, previous)
                where = f"{pod.metadata.name}/{container.name}" + (" (before)" if previous else "")
                for number, line in enumerate((text or "").splitlines(), 1):
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        problems.append(f"{where} line {number}: {line[:200]!r}")
                        continue
                    if not isinstance(entry, dict):
                        problems.append(f"{where} line {number}: not an object: {line[:200]!r}")
                        continue
                    lines[component] = lines.get(component, 0) + 1
    assert lines.get("server"), f"no JSON line from a server pod: {lines}"
    assert lines.get("worker"), f"no JSON line from a worker pod: {lines}"
    assert not problems, f"{len(problems)} log lines are not one JSON object:\n" + "\n".join(
        problems[:15]
    )
