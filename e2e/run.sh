#!/usr/bin/env bash
# kiqstack end-to-end on a real cluster: `make e2e` (kind) and `make e2e-existing` (the current kube
# context) run this script; .ci/run runs it on its own cluster (e2e/cluster/ci.sh).
#
#   1. the cluster: E2E_CLUSTER=kind creates the kind cluster from e2e/kind-config.yaml (or reuses one of
#      the same name), builds the kiqstack image and the example task package's image FROM it
#      (examples/acme-tasks), `kind load`s the latter and installs metrics-server;
#      E2E_CLUSTER=existing uses the current context (or E2E_KUBE_CONTEXT) as it is: the example image
#      E2E_IMAGE:E2E_TAG (`make example-image`) must be pullable by (or loaded into) the cluster, and
#      metrics-server installed
#   2. NATS and Valkey: E2E_DEPS=subcharts builds the chart's dependencies (`helm dependency build`);
#      E2E_DEPS=harness deploys e2e/harness/ instead (no chart repository needed), with generated
#      credentials handed to the release through an existing Secret
#   3. `helm upgrade --install --wait` with E2E_VALUES and e2e/example-values.yaml (TASK_MODULES with the
#      example package's module), then `helm test --logs`
#   4. `pytest e2e/` (E2E_REQUIRE=1: a missing cluster or release fails instead of skipping)
#   on failure: pod logs, events and descriptions go to $E2E_ARTIFACTS (and a summary to stdout)
#   at the end: delete the kind cluster if this script created it, unless KEEP_CLUSTER=1
#
# Usage: e2e/run.sh [all|dump]      (`dump` only collects logs and events of an existing release)
# Needs: kubectl, helm (3.8+ or 4), a Python with pytest + kubernetes (`make install`); kind and docker
# for E2E_CLUSTER=kind.
#
# Environment (defaults in brackets):
#   E2E_CLUSTER      kind | existing [kind]
#   E2E_DEPS         subcharts | harness [subcharts]
#   KIND_CLUSTER     kind cluster name [kiqstack-e2e]; an existing cluster of that name is reused and kept
#   KEEP_CLUSTER     1 = keep the kind cluster this script created [0]
#   E2E_KUBE_CONTEXT kube context of E2E_CLUSTER=existing [the current one]
#   E2E_RELEASE      Helm release [kiqstack]          E2E_NAMESPACE  namespace [kiqstack]
#   E2E_IMAGE        repository of the example task package's image the release runs [kiqstack/acme-tasks]
#   E2E_TAG          its tag [e2e-<git sha>-<time>; required with E2E_CLUSTER=existing]
#   E2E_BASE_IMAGE   repository of the kiqstack image kind builds it FROM [kiqstack] (tag E2E_TAG)
#   E2E_VALUES       values file of the release [kind: e2e/values.yaml, existing: e2e/existing-values.yaml]
#   E2E_NATS_IMAGE   NATS image of the harness [nats:2.14.2-alpine]
#   E2E_VALKEY_IMAGE Valkey image of the harness [valkey/valkey:9.1.1]
#   SKIP_BUILD       1 = do not build; E2E_IMAGE:E2E_TAG must exist locally (kind) [0]
#   E2E_NETWORK_POLICY enforced | unenforced: whether the cluster's CNI enforces NetworkPolicies (kind's
#                    kindnetd does); unenforced skips the tests that need it [enforced]
#   E2E_ARTIFACTS    where failure logs go [.tmp/e2e-artifacts]
#   HELM_TIMEOUT     timeout of helm install/upgrade/test [10m]
#   PYTHON           Python for pytest [.venv/bin/python, else python3]
#   PYTEST_ARGS      extra pytest arguments, e.g. "-k burst -x"
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

E2E_CLUSTER="${E2E_CLUSTER:-kind}"
E2E_DEPS="${E2E_DEPS:-subcharts}"
KIND_CLUSTER="${KIND_CLUSTER:-kiqstack-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
E2E_RELEASE="${E2E_RELEASE:-kiqstack}"
E2E_NAMESPACE="${E2E_NAMESPACE:-kiqstack}"
E2E_IMAGE="${E2E_IMAGE:-kiqstack/acme-tasks}"
E2E_BASE_IMAGE="${E2E_BASE_IMAGE:-kiqstack}"
E2E_NATS_IMAGE="${E2E_NATS_IMAGE:-nats:2.14.2-alpine}"
E2E_VALKEY_IMAGE="${E2E_VALKEY_IMAGE:-valkey/valkey:9.1.1}"
E2E_ARTIFACTS="${E2E_ARTIFACTS:-.tmp/e2e-artifacts}"
HELM_TIMEOUT="${HELM_TIMEOUT:-10m}"
SKIP_BUILD="${SKIP_BUILD:-0}"
PYTEST_ARGS="${PYTEST_ARGS:-}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
case "$E2E_CLUSTER" in
  kind) E2E_VALUES="${E2E_VALUES:-e2e/values.yaml}" ;;
  existing) E2E_VALUES="${E2E_VALUES:-e2e/existing-values.yaml}" ;;
  *) printf 'e2e/run.sh: error: E2E_CLUSTER must be kind or existing, not %s\n' "$E2E_CLUSTER" >&2; exit 2 ;;
esac
case "$E2E_DEPS" in
  subcharts | harness) ;;
  *) printf 'e2e/run.sh: error: E2E_DEPS must be subcharts or harness, not %s\n' "$E2E_DEPS" >&2; exit 2 ;;
esac

# Chart repositories of the subcharts in chart/Chart.yaml (there is no Chart.lock, so
# `helm dependency build` resolves them and needs both repositories added).
NATS_REPO_URL="https://nats-io.github.io/k8s/helm/charts/"
VALKEY_REPO_URL="https://valkey.io/valkey-helm/"
METRICS_SERVER_REPO_URL="https://kubernetes-sigs.github.io/metrics-server/"
METRICS_SERVER_CHART_VERSION="3.13.1"
# The harness's Secret with the release's NATS_URL and REDIS_URL (named in e2e/harness/values.yaml).
HARNESS_URLS_SECRET="e2e-kiqstack-urls"

if [[ "$E2E_CLUSTER" == kind ]]; then
  KUBE_CONTEXT="kind-${KIND_CLUSTER}"
else
  KUBE_CONTEXT="${E2E_KUBE_CONTEXT:-$(kubectl config current-context 2>/dev/null || true)}"
fi
CHART_DIR=chart
CREATED_CLUSTER=0
WORK_DIR=""

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'e2e/run.sh: error: %s\n' "$*" >&2; exit 1; }

require_tools() {
  local missing=() tool tools=(kubectl helm)
  [[ "$E2E_CLUSTER" == kind ]] && tools+=(docker kind)
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) || die "missing on PATH: ${missing[*]} (E2E_CLUSTER=$E2E_CLUSTER needs ${tools[*]})"
  "$PYTHON" -c 'import kubernetes, pytest' 2>/dev/null \
    || die "$PYTHON lacks pytest/kubernetes: run 'make install' or set PYTHON"
  [[ -n "$KUBE_CONTEXT" ]] || die "no kube context: set E2E_KUBE_CONTEXT or select one (kubectl config use-context)"
  if [[ "$E2E_CLUSTER" == existing && -z "${E2E_TAG:-}" ]]; then
    die "E2E_CLUSTER=existing needs E2E_TAG (and E2E_IMAGE): the example task package image of this checkout (make example-image) that the cluster can pull or has loaded"
  fi
}

k() { kubectl --context "$KUBE_CONTEXT" "$@"; }
h() { helm --kube-context "$KUBE_CONTEXT" "$@"; }

# --- the cluster --------------------------------------------------------------------------------

ensure_kind_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    log "reusing kind cluster $KIND_CLUSTER (it will be kept)"
  else
    log "creating kind cluster $KIND_CLUSTER"
    kind create cluster --name "$KIND_CLUSTER" --config e2e/kind-config.yaml --wait 180s
    CREATED_CLUSTER=1
  fi
}

build_and_load_image() {
  if [[ -z "${E2E_TAG:-}" ]]; then
    # Never `latest` (kind would pull it: pullPolicy Always); unique per run, so a rebuilt image always rolls.
    E2E_TAG="e2e-$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)-$(date +%Y%m%d%H%M%S)"
  fi
  if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building ${E2E_BASE_IMAGE}:${E2E_TAG}, then ${E2E_IMAGE}:${E2E_TAG} FROM it (examples/acme-tasks)"
    DOCKER_BUILDKIT=1 docker build --tag "${E2E_BASE_IMAGE}:${E2E_TAG}" \
      --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || true)" .
    DOCKER_BUILDKIT=1 docker build --tag "${E2E_IMAGE}:${E2E_TAG}" \
      --build-arg KIQSTACK_IMAGE="${E2E_BASE_IMAGE}:${E2E_TAG}" examples/acme-tasks
  fi
  log "loading ${E2E_IMAGE}:${E2E_TAG} into kind cluster $KIND_CLUSTER"
  kind load docker-image "${E2E_IMAGE}:${E2E_TAG}" --name "$KIND_CLUSTER"
}

install_metrics_server() {
  log "installing metrics-server ${METRICS_SERVER_CHART_VERSION} (--kubelet-insecure-tls: kind kubelets use self-signed certs)"
  h upgrade --install metrics-server metrics-server \
    --repo "$METRICS_SERVER_REPO_URL" --version "$METRICS_SERVER_CHART_VERSION" \
    --namespace kube-system \
    --set 'args={--kubelet-insecure-tls}' \
    --wait --timeout "$HELM_TIMEOUT"
}

prepare_cluster() {
  if [[ "$E2E_CLUSTER" == kind ]]; then
    ensure_kind_cluster
    k cluster-info >/dev/null
    build_and_load_image
    install_metrics_server
  else
    log "using the existing cluster of context $KUBE_CONTEXT"
    k cluster-info >/dev/null
  fi
  # The worker HPA tests read live metrics.
  k wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=180s \
    || die "the metrics API (metrics-server) is not available in context $KUBE_CONTEXT"
  k create namespace "$E2E_NAMESPACE" --dry-run=client -o yaml | k apply -f - >/dev/null
}

# --- NATS and Valkey ----------------------------------------------------------------------------

build_chart_dependencies() {
  log "helm dependency build chart"
  helm repo add nats "$NATS_REPO_URL" --force-update >/dev/null
  helm repo add valkey "$VALKEY_REPO_URL" --force-update >/dev/null
  helm dependency build chart
}

# Helm refuses to install a chart whose declared dependencies are missing from charts/, even those
# its values disable. With the subcharts off and no chart repository, install a copy of chart/ whose
# charts/ holds empty placeholders of the pinned names and versions: they render nothing.
placeholder_chart() {
  WORK_DIR="$(mktemp -d)"
  CHART_DIR="$WORK_DIR/kiqstack"
  cp -r chart "$CHART_DIR"
  rm -rf "$CHART_DIR/charts"
  "$PYTHON" - "$CHART_DIR" <<'EOF'
import pathlib, sys, yaml
root = pathlib.Path(sys.argv[1])
for dep in yaml.safe_load((root / "Chart.yaml").read_text())["dependencies"]:
    sub = root / "charts" / dep["name"]
    sub.mkdir(parents=True)
    meta = {"apiVersion": "v2", "name": dep["name"], "version": dep["version"],
            "description": "e2e placeholder: disabled by the release's values, renders nothing"}
    (sub / "Chart.yaml").write_text(yaml.safe_dump(meta))
EOF
}

# A letter first: nats-server parses the value of a `$NATS_PASSWORD` reference as a config value, so
# hex that starts with digits can read as a number (`8e21ab...` is a float: the server exits).
random_secret() { printf 'kiq%s' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; }

deploy_harness() {
  log "deploying the harness's NATS ($E2E_NATS_IMAGE) and Valkey ($E2E_VALKEY_IMAGE) in $E2E_NAMESPACE"
  local nats_password valkey_password ns="$E2E_NAMESPACE"
  # Keep the credentials of an earlier run: a running NATS/Valkey only reads them at start.
  nats_password="$(k -n "$ns" get secret e2e-nats -o 'jsonpath={.data.NATS_PASSWORD}' 2>/dev/null | base64 -d || true)"
  valkey_password="$(k -n "$ns" get secret e2e-valkey -o 'jsonpath={.data.VALKEY_PASSWORD}' 2>/dev/null | base64 -d || true)"
  [[ -n "$nats_password" ]] || nats_password="$(random_secret)"
  [[ -n "$valkey_password" ]] || valkey_password="$(random_secret)"
  k -n "$ns" create secret generic e2e-nats --from-literal=NATS_PASSWORD="$nats_password" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n "$ns" create secret generic e2e-valkey --from-literal=VALKEY_PASSWORD="$valkey_password" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n "$ns" create secret generic "$HARNESS_URLS_SECRET" \
    --from-literal=NATS_URL="nats://kiqstack:${nats_password}@e2e-nats.${ns}.svc:4222" \
    --from-literal=REDIS_URL="redis://:${valkey_password}@e2e-valkey.${ns}.svc:6379/0" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  sed "s|@NATS_IMAGE@|$E2E_NATS_IMAGE|" e2e/harness/nats.yaml | k -n "$ns" apply -f - >/dev/null
  sed "s|@VALKEY_IMAGE@|$E2E_VALKEY_IMAGE|" e2e/harness/valkey.yaml | k -n "$ns" apply -f - >/dev/null
  k -n "$ns" rollout status deployment/e2e-nats --timeout=180s
  k -n "$ns" rollout status deployment/e2e-valkey --timeout=180s
}

prepare_dependencies() {
  if [[ "$E2E_DEPS" == subcharts ]]; then
    build_chart_dependencies
  else
    placeholder_chart
    deploy_harness
  fi
}

# --- the release --------------------------------------------------------------------------------

install_release() {
  local values=(--values "$E2E_VALUES" --values e2e/example-values.yaml)
  [[ "$E2E_DEPS" == harness ]] && values+=(--values e2e/harness/values.yaml)
  log "helm upgrade --install $E2E_RELEASE (namespace $E2E_NAMESPACE, ${values[*]})"
  h upgrade --install "$E2E_RELEASE" "$CHART_DIR" \
    --namespace "$E2E_NAMESPACE" --create-namespace \
    "${values[@]}" \
    --set-string image.repository="$E2E_IMAGE" \
    --set-string image.tag="$E2E_TAG" \
    --wait --timeout "$HELM_TIMEOUT"
  k -n "$E2E_NAMESPACE" get pods -o wide
}

run_helm_test() {
  log "helm test $E2E_RELEASE --logs"
  h test "$E2E_RELEASE" --namespace "$E2E_NAMESPACE" --logs --timeout "$HELM_TIMEOUT"
}

run_pytest() {
  log "pytest e2e/"
  local args=() nats_selector
  # shellcheck disable=SC2206  # PYTEST_ARGS is a user-supplied word list
  [[ -n "$PYTEST_ARGS" ]] && args=($PYTEST_ARGS)
  if [[ "$E2E_DEPS" == harness ]]; then
    nats_selector="app.kubernetes.io/name=e2e-nats"
  else
    nats_selector="app.kubernetes.io/name=nats,app.kubernetes.io/instance=$E2E_RELEASE"
  fi
  E2E_REQUIRE=1 \
    E2E_KUBE_CONTEXT="$KUBE_CONTEXT" \
    E2E_RELEASE="$E2E_RELEASE" \
    E2E_NAMESPACE="$E2E_NAMESPACE" \
    E2E_CHART="$CHART_DIR" \
    E2E_NATS_SELECTOR="$nats_selector" \
    E2E_ARTIFACTS="$E2E_ARTIFACTS" \
    E2E_NETWORK_POLICY="${E2E_NETWORK_POLICY:-enforced}" \
    "$PYTHON" -m pytest e2e/ -m e2e -v -rs -p no:cacheprovider "${args[@]}"
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
  h status "$E2E_RELEASE" -n "$E2E_NAMESPACE" --show-resources >"$dir/helm-status.txt" 2>&1
  h history "$E2E_RELEASE" -n "$E2E_NAMESPACE" >"$dir/helm-history.txt" 2>&1
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
  [[ -n "$WORK_DIR" ]] && rm -rf "$WORK_DIR"
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
      STAGE=cluster-ready
      prepare_cluster
      prepare_dependencies
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
