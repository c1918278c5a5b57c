#!/usr/bin/env bash
# Paths are unquoted on purpose (word lists of binaries, short commands): the cache path may hold
# no white space, which is checked below.
# shellcheck disable=SC2086,SC2231,SC2013,SC2015
# CI-only: a real single-node Kubernetes as host processes, built offline from package registries
# (Go module proxy + Debian apt), for `.ci/run`'s cluster phase and `make e2e-existing` on a machine
# without kind. Not for users: they run `make e2e` on kind (e2e/run.sh).
#
#   cluster.sh build          binaries into $CACHE (kept between runs, keyed by version; idempotent)
#   cluster.sh up             start everything, install metrics-server, wait for node Ready + metrics API
#   cluster.sh load IMAGE...  docker image -> the cluster's containerd (k8s.io namespace)
#   cluster.sh image-static NAME ENTRYPOINT FILE...   an image of static binaries, straight into containerd
#   cluster.sh down           stop what `up` started (by PID), remove its mounts, nft table, bridge, rules
#   cluster.sh env            the export line (KUBECONFIG, PATH with kubectl and helm)
#   cluster.sh status | versions | logs
#
# Components: etcd, kube-apiserver (with the aggregation layer for metrics-server),
# kube-controller-manager, kube-scheduler, containerd 2 + runc, kubelet, kube-proxy (nftables), a CNI
# bridge, dnsmasq as cluster DNS (fed from Services), metrics-server, kube-network-policies (enforces
# NetworkPolicies, as kind's kindnetd does). Kubernetes, metrics-server, kube-network-policies,
# nats-server (for the e2e harness image) and Helm 4 are compiled from the Go module proxy; containerd,
# etcd and the CNI plugins are Debian unstable's binary packages (unpacked, not installed); runc is
# the host's. Needs root; no container registry (images are built locally and loaded).
#
# Environment: KIQSTACK_K8S_CACHE  cache and state root [/var/tmp/kiqstack-k8s]
#              GO                  Go toolchain [go on PATH]; its minor must match the one Kubernetes pins,
#                                  else the pinned toolchain is fetched from the Go module proxy
set -euo pipefail

# Versions (each cached in its own directory: bumping one rebuilds only that one).
# Kubernetes 1.36: the minor of kind's node image (e2e/kind-config.yaml); it pins Go 1.26 (.go-version),
# the Go installed here (Go 1.27 breaks k8s 1.36's OpenAPI document).
K8S_VERSION=${K8S_VERSION:-v1.36.3}
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.8.0}   # = metrics-server chart 3.13.x (e2e/run.sh, kind)
NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-v2.14.2}        # = appVersion of the nats chart in chart/Chart.yaml
HELM_VERSION=${HELM_VERSION:-v4.2.4}                       # = .github/workflows/e2e.yml
NETPOL_VERSION=${NETPOL_VERSION:-v0.8.0}                   # sigs.k8s.io/kube-network-policies (kindnetd's engine)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KIQSTACK_K8S_CACHE:-/var/tmp/kiqstack-k8s}
BIN=$CACHE/bin                       # symlinks to the versioned builds below (what PATH gets)
K8S_DIR=$CACHE/kubernetes-$K8S_VERSION
MS_DIR=$CACHE/metrics-server-$METRICS_SERVER_VERSION
NATS_DIR=$CACHE/nats-server-$NATS_SERVER_VERSION
HELM_DIR=$CACHE/helm-$HELM_VERSION
NETPOL_DIR=$CACHE/kube-network-policies-$NETPOL_VERSION
DEB_DIR=$CACHE/debian-sid            # containerd, etcd, CNI plugins (DEBIAN-PACKAGES lists the versions)
MISC_DIR=$CACHE/misc                 # pause
R=$CACHE/run; P=$R/pki; STATE=/run/kiqstack-k8s
NODE=kiqstack-node; BR=kiqk8s0; IP=10.244.0.1; POD_CIDR=10.244.0.0/24; SVC_CIDR=10.97.0.0/16; SVC_API=10.97.0.1
API_PORT=46443; ETCD_PORT=42379; ETCD_PEER=42380; KUBELET_PORT=41250
SOCK=$STATE/containerd.sock; CG=kiqstack-k8s   # cgroup parent of every pod
PAUSE_IMAGE=kiqstack-k8s.local/pause:1
METRICS_SERVER_IMAGE=kiqstack-k8s.local/metrics-server:$METRICS_SERVER_VERSION
NETPOL_IMAGE=kiqstack-k8s.local/kube-network-policies:$NETPOL_VERSION
NETPOL_QUEUE=98; NETPOL_METRICS=127.0.0.1:41281   # its NFQUEUE number and metrics address (host network)
K8S_BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
ALL_BINS="$K8S_BINS etcd containerd containerd-shim-runc-v2 ctr helm metrics-server kube-network-policies nats-server pause"
export KUBECONFIG=$R/kubeconfig PATH=$BIN:$PATH
[[ "$CACHE" != *[[:space:]]* ]] || { echo "KIQSTACK_K8S_CACHE may not contain white space" >&2; exit 2; }

log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root"; }

# ---------------------------------------------------------------- build
apt_deps() {
  local pkgs="runc iptables nftables iproute2 dnsmasq-base openssl gcc libc6-dev python3 ca-certificates"
  # shellcheck disable=SC2086
  dpkg -s $pkgs >/dev/null 2>&1 && return 0
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
}

# containerd 2.x, etcd 3.5+ and the CNI plugins: bookworm's are too old (containerd 1.6, etcd 3.4), so
# take Debian unstable's binary packages and unpack them (Go binaries that need only glibc >= 2.34).
# runc stays the host's (unstable's needs a newer glibc).
debian_sid_bins() {
  [ -x $DEB_DIR/containerd ] && [ -x $DEB_DIR/etcd ] && [ -x $DEB_DIR/cni/bridge ] && return 0
  local A=$CACHE/apt M O
  mkdir -p $A/lists/partial $A/cache/archives/partial $A/etc $A/debs $DEB_DIR/cni
  M=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$M" ] || M=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$M" ] || M=http://deb.debian.org/debian
  printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$M" > $A/etc/sid.sources
  O="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$A/etc -o Dir::State::Lists=$A/lists -o Dir::Cache=$A/cache"
  log "downloading containerd, etcd and the CNI plugins from Debian unstable ($M)"
  # shellcheck disable=SC2086
  apt-get $O update -qq
  # shellcheck disable=SC2086
  (cd $A/debs && rm -f ./*.deb && apt-get $O download containerd etcd-server containernetworking-plugins 2>&1 |
    { grep -v '^W: Download is performed unsandboxed' || true; })
  rm -rf $A/x && mkdir $A/x && for d in $A/debs/*.deb; do dpkg-deb -x "$d" $A/x; done
  cp $A/x/usr/bin/containerd $A/x/usr/bin/containerd-shim-runc-v2 $A/x/usr/bin/ctr $A/x/usr/bin/etcd $DEB_DIR/
  cp $A/x/usr/lib/cni/bridge $A/x/usr/lib/cni/host-local $A/x/usr/lib/cni/loopback $A/x/usr/lib/cni/portmap $DEB_DIR/cni/
  (cd $A/debs && ls ./*.deb) | sed 's|^\./||' > $DEB_DIR/DEBIAN-PACKAGES
  rm -rf $A/x $A/debs
  $DEB_DIR/containerd --version >/dev/null && $DEB_DIR/etcd --version >/dev/null ||
    die "Debian unstable's binaries do not run here (glibc too old?)"
}

pause_bin() {  # the pod sandbox process: sleeps, reaps children, exits on INT/TERM
  [ -x $MISC_DIR/pause ] && return 0
  mkdir -p $MISC_DIR; local d; d=$(mktemp -d)
  cat > $d/pause.c <<'EOC'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, NULL); sigaction(SIGTERM, &q, NULL); sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
EOC
  local rc=0; nice -n 19 gcc -Os -static -o $MISC_DIR/pause $d/pause.c && strip $MISC_DIR/pause || rc=$?
  rm -rf $d; return $rc  # (a failed gcc must fail the build, not leave a missing pause)
}

# The Go environment of every build: caches under $CACHE, static binaries, the toolchain of the
# minor release Kubernetes pins (the local one when it matches, else fetched from the module proxy).
go_env() {
  GO=${GO:-$(command -v go || true)}
  [ -x "$GO" ] || die "no Go toolchain (install Go $1 or set GO=)"
  export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOPATH=$CACHE/go/path GOFLAGS=-mod=mod CGO_ENABLED=0
  local have; have=$(GOTOOLCHAIN=local $GO env GOVERSION)
  if [[ "$have" == "go${1%.*}".* || "$have" == "go${1%.*}" ]]; then
    export GOTOOLCHAIN=local
  else
    log "Go $have does not match the pinned $1: using toolchain go$1 from the Go module proxy"
    export GOTOOLCHAIN=go$1
  fi
}

# k8s.io/kubernetes through a wrapper module that pins every staging module (k8s.io/api, ...) at the
# matching v0.x release: k8s.io/kubernetes' own go.mod replaces them with ./staging paths that are not
# in its module zip.
build_kubernetes() {
  local b missing=""; for b in $K8S_BINS; do [ -x $K8S_DIR/$b ] || missing="$missing $b"; done
  [ -z "$missing" ] && return 0
  local V=$K8S_VERSION SV="v0.${K8S_VERSION#v1.}" W=$CACHE/src/kubernetes-$K8S_VERSION json gomod dir gov
  mkdir -p $W $K8S_DIR
  json=$(GOTOOLCHAIN=local GOMODCACHE=$CACHE/go/mod GOFLAGS=-mod=mod ${GO:-go} mod download -json k8s.io/kubernetes@$V) ||
    die "the Go module proxy did not serve k8s.io/kubernetes@$V: $json"
  gomod=$(sed -n 's/^\s*"GoMod": "\(.*\)",*$/\1/p' <<<"$json"); dir=$(sed -n 's/^\s*"Dir": "\(.*\)",*$/\1/p' <<<"$json")
  gov=$(cat "$dir/.go-version" 2>/dev/null || sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  go_env "$gov"
  log "building Kubernetes $V with $($GO version | cut -d' ' -f3) (it pins Go $gov)"
  { echo "module kiqstack.local/k8s-build"; echo; grep -m1 '^go ' "$gomod"; grep '^godebug' "$gomod" || true; echo
    echo "require k8s.io/kubernetes $V"; echo
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/src/.*#replace \1 => \1 '"$SV"'#p' "$gomod" | sort -u; } > $W/go.mod
  echo 'package build' > $W/doc.go
  local pkgs="" at="" mi LD="-s -w" p D
  for b in $K8S_BINS; do pkgs="$pkgs k8s.io/kubernetes/cmd/$b"; at="$at k8s.io/kubernetes/cmd/$b@$V"; done
  # `go get` at the exact version: without it, it would upgrade k8s.io/kubernetes past the pinned staging modules
  mi=${K8S_VERSION#v1.}; mi=${mi%%.*}; D=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=$V -X $p.gitMajor=1 -X $p.gitMinor=$mi -X $p.gitTreeState=clean -X $p.buildDate=$D"
  done
  # shellcheck disable=SC2086
  (cd $W && nice -n 19 $GO get $at && nice -n 19 $GO build -trimpath -tags selinux,notest -ldflags "$LD" -o $K8S_DIR/ $pkgs)
}

# A main package of a module, at a version, with `go install` (modules without replace directives).
go_install() {  # DIR PACKAGE@VERSION [LDFLAGS]
  local out=$1 pkg=$2 ld="-s -w ${3:-}"
  mkdir -p "$out"
  go_env "$(GOTOOLCHAIN=local ${GO:-go} env GOVERSION | sed 's/^go//')"
  log "building $pkg"
  GOBIN=$out nice -n 19 $GO install -trimpath -ldflags "$ld" "$pkg"
}

build_metrics_server() {
  [ -x $MS_DIR/metrics-server ] || go_install $MS_DIR sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION \
    "-X sigs.k8s.io/metrics-server/pkg/version.gitVersion=$METRICS_SERVER_VERSION"
}
build_nats_server() { [ -x $NATS_DIR/nats-server ] || go_install $NATS_DIR github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION; }
build_helm() {
  [ -x $HELM_DIR/helm ] || go_install $HELM_DIR helm.sh/helm/v4/cmd/helm@$HELM_VERSION \
    "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
}
build_netpol() {
  [ -x $NETPOL_DIR/kube-network-policies ] && return 0
  go_install $NETPOL_DIR sigs.k8s.io/kube-network-policies/cmd@$NETPOL_VERSION
  mv $NETPOL_DIR/cmd $NETPOL_DIR/kube-network-policies  # its main package is ./cmd: `go install` names it cmd
}

# The builds in the background, each logging to $CACHE/log/NAME.log. The Go builds run one after the
# other: they share many dependencies (client-go, gRPC, Prometheus, golang.org/x/...), which the build
# cache then compiles once; side by side each compiled them again (measured on 2 cores, cold: helm alone
# took 15 min beside the others, against about 11 min for all five in a row). The Debian download and
# the pause binary (no Go) run beside them.
BG_JOBS=()
bg() {  # NAME:FUNCTION...: the FUNCTIONs one after the other, in the background; stops at the first failure
  local step names=""
  for step in "$@"; do names="$names ${step%%:*}"; done
  (
    for step in "$@"; do
      exec > $CACHE/log/${step%%:*}.log 2>&1
      t=$SECONDS
      "${step#*:}"
      log "${step%%:*} ready in $((SECONDS - t)) s"
    done
  ) &
  BG_JOBS+=("$!:${names# }")
}
bg_wait() {  # wait for every job; show the log of the step that failed
  local job name failed=""
  for job in "${BG_JOBS[@]}"; do
    if wait "${job%%:*}"; then
      for name in ${job#*:}; do tail -n 1 $CACHE/log/$name.log >&2; done
      continue
    fi
    for name in ${job#*:}; do
      tail -n 1 $CACHE/log/$name.log 2>/dev/null | grep -q "$name ready in" && { tail -n 1 $CACHE/log/$name.log >&2; continue; }
      failed="$failed $name"; log "$name FAILED:"; tail -n 40 $CACHE/log/$name.log >&2 || true; break
    done
  done
  BG_JOBS=()
  [ -z "$failed" ] || die "build failed:$failed (logs in $CACHE/log)"
}

link_bins() {
  rm -rf $BIN && mkdir -p $BIN/cni
  local b
  for b in $K8S_BINS; do ln -s $K8S_DIR/$b $BIN/$b; done
  for b in containerd containerd-shim-runc-v2 ctr etcd; do ln -s $DEB_DIR/$b $BIN/$b; done
  for b in bridge host-local loopback portmap; do ln -s $DEB_DIR/cni/$b $BIN/cni/$b; done
  ln -s $MS_DIR/metrics-server $BIN/; ln -s $NATS_DIR/nats-server $BIN/; ln -s $HELM_DIR/helm $BIN/
  ln -s $NETPOL_DIR/kube-network-policies $BIN/
  ln -s $MISC_DIR/pause $BIN/
}

build() {
  need_root
  local t0=$SECONDS
  mkdir -p $CACHE/log
  apt_deps
  rm -f $CACHE/log/*.log
  bg kubernetes:build_kubernetes metrics-server:build_metrics_server kube-network-policies:build_netpol \
    helm:build_helm nats-server:build_nats_server
  bg debian-sid:debian_sid_bins pause:pause_bin
  bg_wait
  link_bins
  check_bins
  versions | tee $CACHE/VERSIONS >&2
  log "build done in $((SECONDS - t0)) s"
}

check_bins() { local b; for b in $ALL_BINS cni/bridge; do [ -x $BIN/$b ] || die "missing $BIN/$b: run $0 build"; done; }

versions() {
  local b
  for b in kube-apiserver kubelet; do printf '%-16s %s\n' $b "$($BIN/$b --version 2>/dev/null)"; done
  printf '%-16s %s\n' kubectl "$($BIN/kubectl version --client 2>/dev/null | head -1)" \
    etcd "$($BIN/etcd --version | head -1)" containerd "$($BIN/containerd --version)" \
    runc "$(runc --version | head -1)" helm "$($BIN/helm version --short 2>/dev/null)" \
    metrics-server "$METRICS_SERVER_VERSION" kube-network-policies "$NETPOL_VERSION" \
    nats-server "$($BIN/nats-server --version)"
}

# ---------------------------------------------------------------- up
cert() {  # NAME CN CA [EXT]: a key and a certificate signed by CA
  openssl req -newkey rsa:2048 -nodes -keyout $1.key -out $1.csr -subj "/CN=$2" 2>/dev/null
  if [ -n "${4:-}" ]; then echo "$4" > $1.ext; else : > $1.ext; fi
  openssl x509 -req -in $1.csr -CA $3.crt -CAkey $3.key -CAcreateserial -out $1.crt -days 365 -extfile $1.ext 2>/dev/null
  rm -f $1.csr $1.ext
}

pki() {
  mkdir -p $P && cd $P
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 -subj /CN=kiqstack-k8s-ca 2>/dev/null
  cert apiserver kube-apiserver ca "subjectAltName=IP:127.0.0.1,IP:$IP,IP:$SVC_API,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # aggregation layer: the API server authenticates to extension API servers (metrics-server) with a
  # client certificate of its own CA, which they trust for the X-Remote-* headers
  openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 365 -subj /CN=kiqstack-k8s-front-proxy-ca 2>/dev/null
  cert front-proxy-client front-proxy-client front-proxy-ca "extendedKeyUsage=clientAuth"
  openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  local tok; tok=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n'); echo "$tok,admin,admin,system:masters" > tokens.csv
  chmod 600 ./*.key tokens.csv
  cat > $KUBECONFIG <<EOK
apiVersion: v1
kind: Config
clusters: [{name: kiqstack-k8s, cluster: {server: "https://$IP:$API_PORT", certificate-authority: $P/ca.crt}}]
users: [{name: admin, user: {token: $tok}}]
contexts: [{name: kiqstack-k8s, context: {cluster: kiqstack-k8s, user: admin}}]
current-context: kiqstack-k8s
EOK
  chmod 600 $KUBECONFIG
  cd - >/dev/null
}

alive() { [ -f $R/$1.pid ] && kill -0 "$(cat $R/$1.pid)" 2>/dev/null; }
start() { local n=$1; shift; alive $n && return 0; nohup "$@" > $R/$n.log 2>&1 < /dev/null & echo $! > $R/$n.pid; }
wait_for() { local i; for i in $(seq $1); do eval "$2" >/dev/null 2>&1 && return 0; sleep 1; done; log "timeout: $2"; return 1; }

# An OCI image archive of static binaries (no base, no docker), imported into containerd.
oci_import() {  # NAME ENTRYPOINT FILE...  (each FILE lands at /<basename>)
  local name=$1 entry=$2; shift 2
  python3 "$HERE/oci_image.py" --name "$name" --entrypoint "$entry" --out $R/image.oci.tar "$@"
  ctr -a $SOCK -n k8s.io images import --local $R/image.oci.tar >/dev/null
  rm -f $R/image.oci.tar
}

cgroups() {  # a parent cgroup of our own, so that this kubelet never touches another kubelet's pods
  local c d
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    mkdir -p /sys/fs/cgroup/$CG
    for c in $(cat /sys/fs/cgroup/cgroup.subtree_control); do echo "+$c" > /sys/fs/cgroup/$CG/cgroup.subtree_control 2>/dev/null || true; done
    return
  fi
  for d in /sys/fs/cgroup/*/; do
    [ -L "${d%/}" ] && continue; mountpoint -q "$d" || continue; mkdir -p "$d$CG"
    if [ -f "$d/cpuset.cpus" ]; then cat "$d/cpuset.cpus" > "$d$CG/cpuset.cpus"; cat "$d/cpuset.mems" > "$d$CG/cpuset.mems"; fi
  done
}

network() {
  sysctl -qw net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "warning: br_netfilter unavailable: Service traffic between pods on the bridge may fail"
  if ! ip link show $BR >/dev/null 2>&1; then
    ip route show $POD_CIDR | grep -q . && die "$POD_CIDR is already routed here: $(ip route show $POD_CIDR)"
    ip link add $BR type bridge
  fi
  ip addr show dev $BR | grep -q "inet $IP/" || ip addr add $IP/24 dev $BR
  ip link set $BR up
  # Docker's FORWARD policy is DROP: let the pod bridge through (removed again by down)
  local d; for d in -i -o; do
    iptables -C FORWARD $d $BR -m comment --comment kiqstack-k8s -j ACCEPT 2>/dev/null ||
      iptables -I FORWARD 1 $d $BR -m comment --comment kiqstack-k8s -j ACCEPT
  done
}

# NetworkPolicies: kube-network-policies as a DaemonSet on the host network, then the netfilter hook
# that hands it the first packet of each new connection of a pod.
netpol() {
  ctr -a $SOCK -n k8s.io images ls -q | grep -qx "$NETPOL_IMAGE" ||
    oci_import $NETPOL_IMAGE /kube-network-policies $BIN/kube-network-policies
  sed -e "s|@IMAGE@|$NETPOL_IMAGE|" -e "s|@QUEUE@|$NETPOL_QUEUE|" -e "s|@METRICS_ADDRESS@|$NETPOL_METRICS|" \
    "$HERE/kube-network-policies.yaml" | kubectl apply -f - >/dev/null
  kubectl -n kube-system rollout status daemonset/kube-network-policies --timeout=180s >&2
  # its informers are in sync and it listens on its queue (the kernel lists bound queues)
  wait_for 60 "awk '\$1 == $NETPOL_QUEUE' /proc/net/netfilter/nfnetlink_queue | grep -q ."
  netpol_hook
}

# kube-network-policies hooks itself into netfilter with an nftables table whose rules use the `queue`
# expression. A kernel built without it (CONFIG_NFT_QUEUE unset, and no modules to load: this CI
# machine's VM kernel) refuses that table; the controller only logs the error, and then no packet
# reaches it and nothing is enforced. There the same packets go to its queue through the xtables
# NFQUEUE target (nft_compat): the first packet of every connection forwarded from or to a pod, i.e.
# all pod-to-pod traffic, Services included (DNAT happens before). The node's own traffic (kubelet
# probes, the API server's proxy) is not forwarded, as kube-network-policies' table accepts root's.
# No --queue-bypass: without a listener the packets are dropped (its default, --fail-open=false).
netpol_hook() {
  if unshare -n sh -c 'nft add table inet q && nft add chain inet q c "{ type filter hook forward priority 0; }" &&
      nft add rule inet q c queue num 1' 2>/dev/null; then
    log "NetworkPolicies enforced by kube-network-policies $NETPOL_VERSION (its own nftables queue rules)"
    return 0
  fi
  local d
  for d in -i -o; do
    iptables -t mangle -C FORWARD $d $BR -m conntrack ! --ctstate ESTABLISHED,RELATED \
      -m comment --comment kiqstack-k8s -j NFQUEUE --queue-num $NETPOL_QUEUE 2>/dev/null ||
      iptables -t mangle -A FORWARD $d $BR -m conntrack ! --ctstate ESTABLISHED,RELATED \
        -m comment --comment kiqstack-k8s -j NFQUEUE --queue-num $NETPOL_QUEUE
  done
  log "NetworkPolicies enforced by kube-network-policies $NETPOL_VERSION (this kernel has no nftables" \
    "queue expression: new pod connections reach its queue $NETPOL_QUEUE through iptables NFQUEUE)"
}

up() {
  need_root
  check_bins
  local t0=$SECONDS
  mkdir -p $R/cni/net.d $R/cni/ipam $R/dns $R/log/pods $STATE
  [ -f $P/tokens.csv ] && [ -f $P/front-proxy-client.crt ] || pki
  network; cgroups

  start etcd etcd --name $NODE --data-dir $R/etcd --listen-client-urls http://127.0.0.1:$ETCD_PORT \
    --advertise-client-urls http://127.0.0.1:$ETCD_PORT --listen-peer-urls http://127.0.0.1:$ETCD_PEER \
    --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER --initial-cluster $NODE=http://127.0.0.1:$ETCD_PEER \
    --unsafe-no-fsync
  start apiserver kube-apiserver --etcd-servers=http://127.0.0.1:$ETCD_PORT \
    --bind-address=$IP --advertise-address=$IP --secure-port=$API_PORT \
    --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key --client-ca-file=$P/ca.crt \
    --token-auth-file=$P/tokens.csv --authorization-mode=Node,RBAC \
    --service-account-key-file=$P/sa.pub --service-account-signing-key-file=$P/sa.key \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=$SVC_CIDR --allow-privileged=true --profiling=false \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --requestheader-client-ca-file=$P/front-proxy-ca.crt --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file=$P/front-proxy-client.crt --proxy-client-key-file=$P/front-proxy-client.key \
    --enable-aggregator-routing=true
  wait_for 90 "kubectl get --raw /readyz"
  start kcm kube-controller-manager --kubeconfig=$KUBECONFIG --leader-elect=false --secure-port=0 \
    --service-account-private-key-file=$P/sa.key --root-ca-file=$P/ca.crt --use-service-account-credentials=false \
    --cluster-signing-cert-file=$P/ca.crt --cluster-signing-key-file=$P/ca.key --profiling=false \
    --horizontal-pod-autoscaler-sync-period=10s
  start scheduler kube-scheduler --kubeconfig=$KUBECONFIG --leader-elect=false --secure-port=0 --profiling=false

  cat > $R/containerd.toml <<EOC
version = 3
root = '$R/containerd'
state = '$STATE/containerd'
disabled_plugins = ['io.containerd.nri.v1.nri']
[grpc]
  address = '$SOCK'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$PAUSE_IMAGE'
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true      # no CAP_SYS_RESOURCE here: never ask runc for a negative oom_score_adj
  netns_mounts_under_state_dir = true
  tolerate_missing_hugetlb_controller = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '$(command -v runc)'
    SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$BIN/cni']
    conf_dir = '$R/cni/net.d'
[plugins.'io.containerd.internal.v1.opt']
  path = '$R/containerd-opt'
EOC
  cat > $R/cni/net.d/10-kiqstack-k8s.conflist <<EOC
{"cniVersion": "1.0.0", "name": "kiqstack-k8s", "plugins": [
  {"type": "bridge", "bridge": "$BR", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$R/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOC
  start containerd containerd --config $R/containerd.toml
  wait_for 30 "ctr -a $SOCK version"
  ctr -a $SOCK -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE" || oci_import $PAUSE_IMAGE /pause $BIN/pause
  ctr -a $SOCK -n k8s.io images ls -q | grep -qx "$METRICS_SERVER_IMAGE" ||
    oci_import $METRICS_SERVER_IMAGE /metrics-server $BIN/metrics-server

  : > $R/resolv.conf
  # The kubelet serves anonymously (AlwaysAllow) on its own port; metrics-server reads it with
  # --kubelet-insecure-tls (self-signed serving certificate).
  cat > $R/kubelet.yaml <<EOC
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 0
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CG
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
clusterDNS: [$IP]
clusterDomain: cluster.local
resolvConf: $R/resolv.conf
podLogsDir: $R/log/pods
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOC
  start kubelet kubelet --kubeconfig=$KUBECONFIG --config=$R/kubelet.yaml --root-dir=$R/kubelet \
    --cert-dir=$R/kubelet-pki --hostname-override=$NODE --node-ip=$IP
  cat > $R/kube-proxy.yaml <<EOC
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG}
hostnameOverride: $NODE
mode: nftables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:41256
metricsBindAddress: 127.0.0.1:41249
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOC
  start proxy kube-proxy --config=$R/kube-proxy.yaml

  # cluster DNS: dnsmasq on the node IP, fed from Services and EndpointSlices (headless + StatefulSet pod names)
  [ -f $R/dns/hosts ] || : > $R/dns/hosts
  start dnsmasq dnsmasq --keep-in-foreground --log-facility=- --user=root --pid-file=$R/dnsmasq.pidfile \
    --listen-address=$IP --bind-interfaces --port=53 --no-resolv --no-hosts --local=/cluster.local/ \
    --local-ttl=2 --addn-hosts=$R/dns/hosts
  start dnsfeed python3 "$HERE/dnsfeed.py" $R/dns/hosts $R/dnsmasq.pid

  wait_for 180 "kubectl get node $NODE | grep -q ' Ready'"
  wait_for 60 "kubectl -n default get serviceaccount default -o name | grep -q ."
  log "node Ready after $((SECONDS - t0)) s; installing metrics-server"
  sed -e "s|@IMAGE@|$METRICS_SERVER_IMAGE|" -e "s|@KUBELET_PORT@|$KUBELET_PORT|" "$HERE/metrics-server.yaml" |
    kubectl apply -f - >/dev/null
  kubectl -n kube-system rollout status deployment/metrics-server --timeout=180s >&2
  kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=180s >&2
  netpol
  kubectl get nodes -o wide >&2
  log "up in $((SECONDS - t0)) s"
  env_line
}

load() {
  [ $# -gt 0 ] || die "usage: cluster.sh load IMAGE..."
  local docker=${DOCKER:-docker} i
  for i in "$@"; do
    "$docker" save "$i" | ctr -a $SOCK -n k8s.io images import --local - >/dev/null
    log "loaded $i"
  done
}

# ---------------------------------------------------------------- down
stop() {  # by the PID that up recorded, only if it is still the program up started
  [ -f $R/$1.pid ] || return 0; local p; p=$(cat $R/$1.pid)
  if kill -0 $p 2>/dev/null && tr '\0' ' ' < /proc/$p/cmdline | grep -q -- "$2"; then
    kill $p 2>/dev/null || true
    for _ in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.2; done
    kill -9 $p 2>/dev/null || true
  fi
  rm -f $R/$1.pid
}

down() {
  set +e +o pipefail  # best effort: never stop half-way
  local c t p
  if alive kubelet && alive apiserver; then  # let the kubelet tear pods down (CNI DEL releases IPs, hostPort rules)
    stop kcm kube-controller-manager; stop scheduler kube-scheduler
    kubectl delete pods -A --all --grace-period=0 --force --wait=false >/dev/null 2>&1
    for _ in $(seq 30); do [ -z "$(ctr -a $SOCK -n k8s.io tasks ls -q 2>/dev/null)" ] && break; sleep 1; done
  fi
  stop dnsfeed dnsfeed.py; stop dnsmasq dnsmasq; stop kubelet kubelet; stop proxy kube-proxy
  stop kcm kube-controller-manager; stop scheduler kube-scheduler
  if [ -S $SOCK ]; then
    for t in $(ctr -a $SOCK -n k8s.io tasks ls -q 2>/dev/null); do ctr -a $SOCK -n k8s.io tasks kill -s SIGKILL $t >/dev/null 2>&1; done
    sleep 1
    for t in $(ctr -a $SOCK -n k8s.io tasks ls -q 2>/dev/null); do ctr -a $SOCK -n k8s.io tasks delete -f $t >/dev/null 2>&1; done
    for c in $(ctr -a $SOCK -n k8s.io containers ls -q 2>/dev/null); do ctr -a $SOCK -n k8s.io containers rm $c >/dev/null 2>&1; done
  fi
  stop containerd containerd
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" 2>/dev/null); do kill -9 $p 2>/dev/null; done  # our shims only
  stop apiserver kube-apiserver; stop etcd etcd
  nft delete table ip kube-proxy 2>/dev/null; nft delete table ip6 kube-proxy 2>/dev/null
  nft delete table inet kube-network-policies 2>/dev/null
  for t in -i -o; do
    while iptables -D FORWARD $t $BR -m comment --comment kiqstack-k8s -j ACCEPT 2>/dev/null; do :; done
    while iptables -t mangle -D FORWARD $t $BR -m conntrack ! --ctstate ESTABLISHED,RELATED \
      -m comment --comment kiqstack-k8s -j NFQUEUE --queue-num $NETPOL_QUEUE 2>/dev/null; do :; done
  done
  mount | awk -v a="$R/" -v b="$STATE/" 'index($3,a)==1 || index($3,b)==1 {print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  ip link del $BR 2>/dev/null
  for c in /sys/fs/cgroup/*/$CG /sys/fs/cgroup/$CG; do [ -d $c ] && find $c -depth -type d -exec rmdir {} \; 2>/dev/null; done
  find /var/log/containers -maxdepth 1 -lname "$R/log/pods/*" -delete 2>/dev/null
  rm -rf $R/etcd $R/kubelet $R/containerd $R/cni/ipam $R/log $R/dns $STATE
  log "down"
  return 0
}

status() {
  local n
  for n in etcd apiserver kcm scheduler containerd kubelet proxy dnsmasq dnsfeed; do
    printf '%-11s %s\n' $n "$(alive $n && echo "running pid $(cat $R/$n.pid)" || echo stopped)"
  done
}

logs() {  # the last lines of every component's log (for CI failures)
  local f
  for f in $R/*.log; do [ -f "$f" ] && { printf '=== %s\n' "$f"; tail -n ${LINES:-25} "$f"; }; done
  if alive apiserver; then
    echo "=== kube-system pods (metrics-server, kube-network-policies)"
    kubectl -n kube-system logs daemonset/kube-network-policies --tail=${LINES:-25} 2>&1
    kubectl -n kube-system logs deployment/metrics-server --tail=${LINES:-25} 2>&1
  fi
  return 0
}

env_line() { echo "export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH"; }

case ${1:-} in
  build) build ;;
  up) up ;;
  load) shift; load "$@" ;;
  image-static) shift; [ $# -ge 3 ] || die "usage: cluster.sh image-static NAME ENTRYPOINT FILE..."; oci_import "$@" ;;
  down) down ;;
  status) status ;;
  logs) logs ;;
  env) env_line ;;
  versions) versions ;;
  *) echo "usage: $0 build|up|load IMAGE...|image-static NAME ENTRYPOINT FILE...|down|status|logs|env|versions" >&2; exit 2 ;;
esac
