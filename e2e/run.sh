#!/usr/bin/env bash
# kiqstack end-to-end on kind: `make e2e` runs this script.
#
#   1. create the kind cluster from e2e/kind-config.yaml (or reuse one of the same name)
#   2. build the image and `kind load` it
#   3. install metrics-server (the worker HPA needs the metrics API; kind has none)
#   4. `helm dependency build chart` + `helm upgrade --install --wait` with e2e/values.yaml
#   5. `helm test`
#   6. `pytest e2e/` (E2E_REQUIRE=1: a missing cluster or release fails instead of skipping)
#   on failure: pod logs, events and descriptions go to $E2E_ARTIFACTS (and a summary to stdout)
#   at the end: delete the cluster if this script created it, unless KEEP_CLUSTER=1
#
# Usage: e2e/run.sh [all|dump]      (`dump` only collects logs and events of an existing release)
# Needs: docker, kind, kubectl, helm (3.8+ or 4), and a Python with pytest + kubernetes (`make install`).
#
# Environment (defaults in brackets):
#   KIND_CLUSTER     kind cluster name [kiqstack-e2e]; an existing cluster of that name is reused and kept
#   KEEP_CLUSTER     1 = keep the cluster this script created [0]
#   E2E_RELEASE      Helm release [kiqstack]          E2E_NAMESPACE  namespace [kiqstack]
#   E2E_IMAGE        image repository [kiqstack]      E2E_TAG        image tag [e2e-<git sha>-<time>]
#   SKIP_BUILD       1 = do not build; E2E_IMAGE:E2E_TAG must exist locally [0]
#   E2E_ARTIFACTS    where failure logs go [.tmp/e2e-artifacts]
#   HELM_TIMEOUT     timeout of helm install/upgrade/test [10m]
#   PYTHON           Python for pytest [.venv/bin/python, else python3]
#   PYTEST_ARGS      extra pytest arguments, e.g. "-k burst -x"
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KIND_CLUSTER="${KIND_CLUSTER:-kiqstack-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
E2E_RELEASE="${E2E_RELEASE:-kiqstack}"
E2E_NAMESPACE="${E2E_NAMESPACE:-kiqstack}"
E2E_IMAGE="${E2E_IMAGE:-kiqstack}"
E2E_ARTIFACTS="${E2E_ARTIFACTS:-.tmp/e2e-artifacts}"
HELM_TIMEOUT="${HELM_TIMEOUT:-10m}"
SKIP_BUILD="${SKIP_BUILD:-0}"
PYTEST_ARGS="${PYTEST_ARGS:-}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Chart repositories of the subcharts in chart/Chart.yaml (there is no Chart.lock, so
# `helm dependency build` resolves them and needs both repositories added).
NATS_REPO_URL="https://nats-io.github.io/k8s/helm/charts/"
VALKEY_REPO_URL="https://valkey.io/valkey-helm/"
METRICS_SERVER_REPO_URL="https://kubernetes-sigs.github.io/metrics-server/"
METRICS_SERVER_CHART_VERSION="3.13.1"

KUBE_CONTEXT="kind-${KIND_CLUSTER}"
CREATED_CLUSTER=0

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'e2e/run.sh: error: %s\n' "$*" >&2; exit 1; }

require_tools() {
  local missing=() tool
  for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) || die "missing on PATH: ${missing[*]} (the e2e suite needs docker, kind, kubectl and helm)"
  "$PYTHON" -c 'import kubernetes, pytest' 2>/dev/null \
    || die "$PYTHON lacks pytest/kubernetes: run 'make install' or set PYTHON"
}

k() { kubectl --context "$KUBE_CONTEXT" "$@"; }

ensure_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    log "reusing kind cluster $KIND_CLUSTER (it will be kept)"
  else
    log "creating kind cluster $KIND_CLUSTER"
    kind create cluster --name "$KIND_CLUSTER" --config e2e/kind-config.yaml --wait 180s
    CREATED_CLUSTER=1
  fi
  k cluster-info >/dev/null
}

build_and_load_image() {
  if [[ -z "${E2E_TAG:-}" ]]; then
    # Never `latest` (kind would pull it: pullPolicy Always); unique per run, so a rebuilt image always rolls.
    E2E_TAG="e2e-$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)-$(date +%Y%m%d%H%M%S)"
  fi
  if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building ${E2E_IMAGE}:${E2E_TAG}"
    DOCKER_BUILDKIT=1 docker build --tag "${E2E_IMAGE}:${E2E_TAG}" \
      --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || true)" .
  fi
  log "loading ${E2E_IMAGE}:${E2E_TAG} into kind cluster $KIND_CLUSTER"
  kind load docker-image "${E2E_IMAGE}:${E2E_TAG}" --name "$KIND_CLUSTER"
}

install_metrics_server() {
  log "installing metrics-server ${METRICS_SERVER_CHART_VERSION} (--kubelet-insecure-tls: kind kubelets use self-signed certs)"
  helm upgrade --install metrics-server metrics-server \
    --kube-context "$KUBE_CONTEXT" \
    --repo "$METRICS_SERVER_REPO_URL" --version "$METRICS_SERVER_CHART_VERSION" \
    --namespace kube-system \
    --set 'args={--kubelet-insecure-tls}' \
    --wait --timeout "$HELM_TIMEOUT"
  k wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=180s
}

build_chart_dependencies() {
  log "helm dependency build chart"
  helm repo add nats "$NATS_REPO_URL" --force-update >/dev/null
  helm repo add valkey "$VALKEY_REPO_URL" --force-update >/dev/null
  helm dependency build chart
}

install_release() {
  log "helm upgrade --install $E2E_RELEASE (namespace $E2E_NAMESPACE)"
  helm upgrade --install "$E2E_RELEASE" chart \
    --kube-context "$KUBE_CONTEXT" \
    --namespace "$E2E_NAMESPACE" --create-namespace \
    --values e2e/values.yaml \
    --set-string image.repository="$E2E_IMAGE" \
    --set-string image.tag="$E2E_TAG" \
    --set-string image.pullPolicy=IfNotPresent \
    --wait --timeout "$HELM_TIMEOUT"
  k -n "$E2E_NAMESPACE" get pods -o wide
}

run_helm_test() {
  log "helm test $E2E_RELEASE"
  helm test "$E2E_RELEASE" --kube-context "$KUBE_CONTEXT" --namespace "$E2E_NAMESPACE" \
    --logs --timeout "$HELM_TIMEOUT"
}

run_pytest() {
  log "pytest e2e/"
  local args=()
  # shellcheck disable=SC2206  # PYTEST_ARGS is a user-supplied word list
  [[ -n "$PYTEST_ARGS" ]] && args=($PYTEST_ARGS)
  E2E_REQUIRE=1 \
    E2E_KUBE_CONTEXT="$KUBE_CONTEXT" \
    E2E_RELEASE="$E2E_RELEASE" \
    E2E_NAMESPACE="$E2E_NAMESPACE" \
    E2E_CHART=chart \
    E2E_ARTIFACTS="$E2E_ARTIFACTS" \
    "$PYTHON" -m pytest e2e/ -m e2e -v -rs "${args[@]}"
}

dump() {
  # Best effort: never let a failing kubectl hide the original error.
  set +e
  local dir="$E2E_ARTIFACTS" pod
  mkdir -p "$dir/logs"
  log "collecting logs, events and descriptions into $dir"
  k get nodes -o wide >"$dir/nodes.txt" 2>&1
  k get all,pvc,hpa,configmaps,events -A -o wide >"$dir/cluster.txt" 2>&1
  k -n "$E2E_NAMESPACE" get events --sort-by=.lastTimestamp >"$dir/events.txt" 2>&1
  k -n "$E2E_NAMESPACE" describe pods >"$dir/describe-pods.txt" 2>&1
  k -n "$E2E_NAMESPACE" describe deployments,statefulsets,hpa >"$dir/describe-workloads.txt" 2>&1
  k -n "$E2E_NAMESPACE" top pods >"$dir/top-pods.txt" 2>&1
  helm status "$E2E_RELEASE" --kube-context "$KUBE_CONTEXT" -n "$E2E_NAMESPACE" --show-resources >"$dir/helm-status.txt" 2>&1
  helm history "$E2E_RELEASE" --kube-context "$KUBE_CONTEXT" -n "$E2E_NAMESPACE" >"$dir/helm-history.txt" 2>&1
  for pod in $(k -n "$E2E_NAMESPACE" get pods -o name 2>/dev/null); do
    pod="${pod#pod/}"
    k -n "$E2E_NAMESPACE" logs "$pod" --all-containers --prefix --timestamps >"$dir/logs/$pod.log" 2>&1
    k -n "$E2E_NAMESPACE" logs "$pod" --all-containers --prefix --timestamps --previous >"$dir/logs/$pod.previous.log" 2>/dev/null \
      || rm -f "$dir/logs/$pod.previous.log"
  done
  k -n kube-system logs deployment/metrics-server --all-containers >"$dir/logs/metrics-server.log" 2>&1
  echo "--- pods ($E2E_NAMESPACE)"
  k -n "$E2E_NAMESPACE" get pods -o wide
  echo "--- last events ($E2E_NAMESPACE)"
  tail -n 30 "$dir/events.txt"
  echo "--- last log lines of this release's pods (app.kubernetes.io/instance=$E2E_RELEASE)"
  k -n "$E2E_NAMESPACE" logs -l "app.kubernetes.io/instance=$E2E_RELEASE" --all-containers --prefix --tail=40
  set -e
}

cleanup() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)) && [[ "${STAGE:-}" == cluster-ready ]]; then
    dump || true
  fi
  if ((CREATED_CLUSTER == 1)); then
    if [[ "$KEEP_CLUSTER" == 1 ]]; then
      log "keeping kind cluster $KIND_CLUSTER (kubectl context $KUBE_CONTEXT); delete it with: kind delete cluster --name $KIND_CLUSTER"
    else
      log "deleting kind cluster $KIND_CLUSTER"
      kind delete cluster --name "$KIND_CLUSTER" || true
    fi
  fi
  if ((rc == 0)); then log "e2e passed"; else log "e2e FAILED (exit $rc); logs in $E2E_ARTIFACTS"; fi
  exit "$rc"
}

main() {
  case "${1:-all}" in
    all)
      require_tools
      trap cleanup EXIT
      ensure_cluster
      STAGE=cluster-ready
      build_and_load_image
      install_metrics_server
      build_chart_dependencies
      install_release
      run_helm_test
      run_pytest
      ;;
    dump)
      dump
      ;;
    *)
      die "unknown command '$1' (use: all, dump)"
      ;;
  esac
}

main "$@"
