"""Network probes from inside the cluster: pods of the e2e suite (inside or outside the release,
in its namespace or another one) and ``kubectl exec`` of e2e/inpod.py in them.

A probe pod runs the release's own image (so it can be pulled wherever the release can) and only
sleeps; every check is one ``kubectl exec``. Its labels decide which NetworkPolicy peers it matches.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.support import Kube, Target, kubectl_path, unavailable

INPOD = pathlib.Path(__file__).with_name("inpod.py")
# Labels of every pod and namespace the probes create (app.kubernetes.io/instance is never set:
# that label makes a pod one of the release's).
PROBE_LABELS = {
    "app.kubernetes.io/name": "kiqstack-e2e-probe",
    "app.kubernetes.io/part-of": "kiqstack-e2e",
}


def kubectl_exec(
    target: Target,
    namespace: str,
    pod: str,
    argv: list[str],
    container: str | None = None,
    timeout: float = 180.0,
) -> str:
    """stdout of ``kubectl exec`` in a pod; fails the test with stderr when it exits non-zero."""
    kubectl = kubectl_path()
    if kubectl is None:
        unavailable("kubectl is not on PATH (needed to exec into pods)")
    cmd = [kubectl, *(["--context", target.context] if target.context else [])]
    cmd += ["--namespace", namespace, "exec", pod]
    cmd += [*(["--container", container] if container else []), "--", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, (
        f"kubectl exec {namespace}/{pod} failed ({done.returncode}): {done.stderr[-2000:]}"
    )
    return done.stdout


def run_checks(
    target: Target,
    namespace: str,
    pod: str,
    checks: list[tuple[str, dict[str, Any]]],
    container: str | None = None,
    timeout: float = 180.0,
) -> list[Any]:
    """Run e2e/inpod.py checks (``[(name, kwargs), ...]``) in a pod; their results, in order."""
    out = kubectl_exec(
        target,
        namespace,
        pod,
        ["python", "-c", INPOD.read_text(), json.dumps(checks)],
        container=container,
        timeout=timeout,
    )
    results: list[Any] = json.loads(out.strip().splitlines()[-1])
    return results


def check(
    target: Target,
    namespace: str,
    pod: str,
    name: str,
    container: str | None = None,
    timeout: float = 180.0,
    **kwargs: Any,
) -> Any:
    """One e2e/inpod.py check in a pod."""
    return run_checks(target, namespace, pod, [(name, kwargs)], container, timeout)[0]


def eventually(
    probe: Callable[[], Any], want: Callable[[Any], bool], what: str, timeout: float = 60.0
) -> Any:
    """Repeat ``probe`` until ``want(result)`` or the deadline (NetworkPolicy changes reach the
    enforcer within seconds, not at once); fails with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if want(result):
            return result
        assert time.monotonic() < deadline, f"{what}: still {result!r} after {timeout:.0f}s"
        time.sleep(2.0)


class ProbePods:
    """Creates sleeping probe pods (and namespaces) on demand; deletes them all at :meth:`close`."""

    def __init__(self, kube: Kube, target: Target) -> None:
        self._kube, self._target = kube, target
        self._pods: list[tuple[str, str]] = []
        self._namespaces: list[str] = []
        template = kube.apps.read_namespaced_deployment(
            target.server, target.namespace
        ).spec.template.spec
        server = next(c for c in template.containers if c.name == "server")
        self._image, self._pull_policy = server.image, server.image_pull_policy
        self._pull_secrets = [s.name for s in template.image_pull_secrets or []]

    def namespace(self, name: str) -> str:
        """A namespace of the suite's own (recreated when a former run left it behind), with the
        release's image pull Secrets copied into it."""
        core = self._kube.core
        deadline = time.monotonic() + 180
        while True:
            try:
                existing = core.read_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                break
            if existing.status.phase != "Terminating":
                core.delete_namespace(name)
            assert time.monotonic() < deadline, f"namespace {name} is still there after 180s"
            time.sleep(2.0)
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=PROBE_LABELS))
        )
        self._namespaces.append(name)
        for secret_name in self._pull_secrets:
            secret = core.read_namespaced_secret(secret_name, self._target.namespace)
            core.create_namespaced_secret(
                name,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name=secret_name),
                    type=secret.type,
                    data=secret.data,
                ),
            )
        return name

    def pod(
        self, name: str, labels: dict[str, str] | None = None, namespace: str | None = None
    ) -> str:
        """Start a probe pod (labels added to PROBE_LABELS) and wait until it runs; its name."""
        namespace = namespace or self._target.namespace
        restricted = client.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        )
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={**PROBE_LABELS, **(labels or {})}),
            spec=client.V1PodSpec(
                restart_policy="Never",
                automount_service_account_token=False,
                termination_grace_period_seconds=0,
                image_pull_secrets=[
                    client.V1LocalObjectReference(name=s) for s in self._pull_secrets
                ]
                or None,
                security_context=client.V1PodSecurityContext(
                    run_as_non_root=True,
                    run_as_user=10001,
                    run_as_group=10001,
                    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
                ),
                containers=[
                    client.V1Container(
                        name="probe",
                        image=self._image,
                        image_pull_policy=self._pull_policy,
                        command=["python", "-c", "import time; time.sleep(3600)"],
                        env=[client.V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1")],
                        security_context=restricted,
                        resources=client.V1ResourceRequirements(
                            requests={"cpu": "10m", "memory": "32Mi"}, limits={"memory": "128Mi"}
                        ),
                    )
                ],
            ),
        )
        with contextlib.suppress(ApiException):
            self._kube.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            self._wait_gone(name, namespace)
        self._kube.core.create_namespaced_pod(namespace, pod)
        self._pods.append((namespace, name))
        deadline = time.monotonic() + 180
        while True:
            status = self._kube.core.read_namespaced_pod(name, namespace).status
            if status.phase == "Running" and any(c.ready for c in status.container_statuses or []):
                return name
            assert status.phase in ("Pending", "Running"), f"probe pod {namespace}/{name}: {status}"
            assert time.monotonic() < deadline, (
                f"probe pod {namespace}/{name} not running after 180s: {status}"
            )
            time.sleep(1.0)

    def _wait_gone(self, name: str, namespace: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self._kube.core.read_namespaced_pod(name, namespace)
            except ApiException:
                return
            time.sleep(1.0)

    def close(self) -> None:
        for namespace, name in self._pods:
            with contextlib.suppress(ApiException):
                self._kube.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        for namespace in self._namespaces:
            with contextlib.suppress(ApiException):
                self._kube.core.delete_namespace(namespace)
