#!/usr/bin/env bash
# Starts the local ephemera test cluster: one real node (127.0.0.1) made of
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a private
# containerd and the kubelet, all from the multicall binary built from
# tests/cluster/cmd/kcluster (and, for an older Kubernetes, the one built from
# tests/cluster/k8s/vX.Y).
#
#   tests/cluster/up.sh [--kubernetes 1.34|1.24|1.22|1.21] [--control-plane-only]
#                       [--feature-gates GATES] [--kubelet-feature-gates GATES]
#
# --control-plane-only       etcd + kube-apiserver + kube-controller-manager only
#                            (no containerd, scheduler or kubelet; pods stay Pending)
# --kubernetes MINOR         the version of apiserver, controller-manager,
#                            scheduler and kubelet (default: 1.34, the main build);
#                            etcd and kubectl are always the main build's
# --feature-gates GATES      e.g. EphemeralContainers=true, for the apiserver,
#                            controller-manager, scheduler and kubelet
# --kubelet-feature-gates G  the kubelet's instead (e.g. EphemeralContainers=false
#                            with the apiserver's gate on)
#
# State lives in ${EPHEMERA_CLUSTER_DIR:-/tmp/ephemera-cluster}; the last line
# printed is `export KUBECONFIG=...`. Running it again while the cluster is
# healthy and has the same settings only prints that line. Several clusters
# can run at once in different state dirs (see README.md, "Instances"). Stop
# one with EPHEMERA_CLUSTER_DIR=... tests/cluster/down.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; }
MODE=full
K8S_MINOR=$MAIN_MINOR
GATES=""
KUBELET_GATES=""
KUBELET_GATES_SET=false
while (($#)); do
  arg=$1; shift
  case $arg in
    --*=*) set -- "${arg#*=}" "$@"; arg=${arg%%=*} ;;
  esac
  case $arg in
    --control-plane-only) MODE=control-plane ;;
    --deps-only) MODE=deps ;; # install packages and build the binaries, start nothing
    --kubernetes | --feature-gates | --kubelet-feature-gates)
      (($#)) || die "$arg needs a value (see --help)"
      case $arg in
        --kubernetes) K8S_MINOR=${1#v} ;;
        --feature-gates) GATES=$1 ;;
        --kubelet-feature-gates) KUBELET_GATES=$1; KUBELET_GATES_SET=true ;;
      esac
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $arg (see up.sh --help)" ;;
  esac
done
$KUBELET_GATES_SET || KUBELET_GATES=$GATES

OLD_DIR=""
if [[ $K8S_MINOR != "$MAIN_MINOR" ]]; then
  [[ -f $CLUSTER_SRC/k8s/v$K8S_MINOR/go.mod ]] ||
    die "no Kubernetes $K8S_MINOR here; --kubernetes takes $MAIN_MINOR (main build) or one of: $(old_minors | tr '\n' ' ')"
  OLD_DIR=$CLUSTER_SRC/k8s/v$K8S_MINOR
fi
gate_re='(^|,)[[:space:]]*EphemeralContainers='
if [[ -z $OLD_DIR ]] && [[ $GATES =~ $gate_re || $KUBELET_GATES =~ $gate_re ]]; then
  die "Kubernetes $MAIN_MINOR has no EphemeralContainers feature gate (GA in 1.25, removed in 1.27: ephemeral containers are always on); use --kubernetes 1.21, 1.22 or 1.24 to turn them off"
fi
if [[ $MODE == control-plane ]] && $KUBELET_GATES_SET; then
  die "--kubelet-feature-gates needs a kubelet; it makes no sense with --control-plane-only"
fi
# The main build serves MutatingAdmissionPolicy (beta and off by default in
# 1.34), which ephemera's chart uses to record who asked for a session.
APISERVER_GATES=$GATES
APISERVER_EXTRA=()
if [[ -z $OLD_DIR ]]; then
  APISERVER_GATES=${GATES:+$GATES,}MutatingAdmissionPolicy=true
  APISERVER_EXTRA=(--runtime-config admissionregistration.k8s.io/v1beta1=true)
fi
# what the state dir records: another value restarts the cluster
SETTINGS="kubernetes=$K8S_MINOR feature-gates=$GATES kubelet-feature-gates=$KUBELET_GATES apiserver-gates=$APISERVER_GATES"

# version_before 1.MINOR: the cluster's Kubernetes is older than that
version_before() { ((${K8S_MINOR#1.} < ${1#1.})); }
GATE_FLAGS=()
[[ -z $GATES ]] || GATE_FLAGS=(--feature-gates "$GATES")
# Before 1.23 the scheduler serves plain HTTP on :10251 and the
# controller-manager on :10252 unless told not to, and two instances collide.
INSECURE_PORT_OFF=()
if version_before 1.23; then INSECURE_PORT_OFF=(--port=0); fi

[[ $(id -u) == 0 ]] || die "up.sh must run as root (it starts containerd and the kubelet)"

T_START=${EPOCHREALTIME/./}
elapsed() { local us=$((${EPOCHREALTIME/./} - T_START)); printf '%d.%ds' $((us / 1000000)) $((us % 1000000 / 100000)); }

# ---------------------------------------------------------------- packages ---
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

install_packages() {
  local pkgs=(openssl curl procps util-linux iproute2)
  if [[ $MODE != control-plane ]]; then
    pkgs+=(containerd runc containernetworking-plugins busybox-static iptables python3)
  fi
  local missing=() p
  for p in "${pkgs[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_one_at_a_time update -qq
  # policy-rc.d-style guard is unnecessary: without systemd as PID 1 the
  # containerd package does not start a daemon; we never use a system one.
  apt_one_at_a_time install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# `make test` builds ephemera's image beside this, which may install buildah: one apt at a
# time (hack/build-image.sh takes the same lock). -o: a daemon a package starts never holds it.
apt_one_at_a_time() { flock -o /tmp/ephemera-apt.lock apt-get "$@"; }

# ------------------------------------------------------------------ binary ---
binary_hash() {
  (
    cd "$CLUSTER_SRC"
    {
      echo "recipe-v1 $(build_ldflags)"
      sha256sum go.mod go.sum
      find cmd -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-12
  )
}

build_ldflags() { version_ldflags "$MAIN_VERSION"; }

# build_once BINARY LOCK LOG DESCRIPTION CMD...: runs CMD (which writes $OUT)
# under LOCK unless BINARY exists; another up.sh may be building the same one
build_once() {
  local bin=$1 lock=$2 buildlog=$3 desc=$4; shift 4
  if [[ -x $bin ]]; then
    log "binary: $bin (cached)"
    return
  fi
  command -v go >/dev/null || die "the Go toolchain is not in PATH; it is needed once to build $bin"
  mkdir -p "$CACHE_DIR"
  exec 9>"$lock"
  flock 9
  if [[ ! -x $bin ]]; then
    log "building $bin ($desc; log: $buildlog)"
    local t0=$SECONDS
    OUT=$bin.tmp.$$
    if ! "$@" >"$buildlog" 2>&1; then
      rm -f "$OUT"
      tail -n 30 "$buildlog" >&2
      die "go build failed (full log: $buildlog)"
    fi
    mv -f "$OUT" "$bin"
    log "built in $((SECONDS - t0))s"
  fi
  exec 9>&-
}

main_build() { (cd "$CLUSTER_SRC" && go build -ldflags "$(build_ldflags)" -o "$OUT" ./cmd/kcluster); }

ensure_binary() {
  KCLUSTER=$CACHE_DIR/kcluster-$(binary_hash)
  build_once "$KCLUSTER" "$CACHE_DIR/build.lock" "$CACHE_DIR/build.log" "cold: ~4-5 min on 2 cores" main_build
}

# The old version's binary: kube-apiserver, kube-controller-manager,
# kube-scheduler and kubelet of $OLD_DIR, built by hack/build-old.sh.
old_binary_hash() {
  (
    cd "$CLUSTER_SRC"
    local d=k8s/v$K8S_MINOR
    {
      echo "old-recipe-v1 $OLD_BUILD_TAGS $(old_build_ldflags "$(k8s_version_in "$d")")"
      sha256sum "$d/go.mod" "$d/go.sum" hack/build-old.sh
      find "$d" -name '*.go' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-12
  )
}

old_build() { "$CLUSTER_SRC/hack/build-old.sh" "$OLD_DIR" "$OUT"; }

ensure_old_binary() {
  KCLUSTER_K8S=$KCLUSTER
  [[ -n $OLD_DIR ]] || return 0
  KCLUSTER_K8S=$CACHE_DIR/kcluster-$(old_binary_hash)
  build_once "$KCLUSTER_K8S" "$CACHE_DIR/build-v$K8S_MINOR.lock" "$CACHE_DIR/build-v$K8S_MINOR.log" \
    "Kubernetes $(k8s_version_in "$OLD_DIR"), cold: ~4-6 min on 2 cores" old_build
}

# ------------------------------------------------------------- processes ---
STARTED=()
start_bg() { # NAME CMD...: start detached, log to $LOGS/NAME.log, record PID and command line
  local name=$1; shift
  # restart.sh starts it again from this record
  printf '%s\0' "$@" >"$PIDS/$name.cmd"
  spawn_daemon "$LOGS/$name.log" "$@"
  echo "$SPAWNED_PID" >"$PIDS/$name.pid"
  STARTED+=("$name")
}

# how_it_ended NAME: sets ENDED to "exit status N" or "killed by SIGNAME" for
# a component that up.sh started and that has exited. Not in a subshell: only
# this shell may `wait` for its children.
how_it_ended() {
  local rc=0
  wait "$(<"$PIDS/$1.pid")" 2>/dev/null || rc=$?
  if ((rc > 128)); then
    ENDED="killed by SIG$(kill -l $((rc - 128)) 2>/dev/null || echo "$((rc - 128))")"
  else
    ENDED="exit status $rc"
  fi
}

fail_with_log() { # COMPONENT MESSAGE
  log "$2"
  show_log "$1" 30
  # a process killed without a word may have been the kernel's OOM killer
  dmesg 2>/dev/null | grep -iE 'out of memory|oom-kill|killed process' | tail -n 5 >&2 || true
  die "cluster start failed ($2); processes and state are left in $STATE for inspection; clean up with $CLUSTER_SRC/down.sh"
}

# wait_until DESCRIPTION TIMEOUT_S LOG_COMPONENT CHECK_CMD...
wait_until() {
  local desc=$1 timeout=$2 comp=$3; shift 3
  local deadline=$((SECONDS + timeout)) c
  while :; do
    if "$@" >/dev/null 2>&1; then
      log "$desc: ok ($(elapsed))"
      return 0
    fi
    for c in "${STARTED[@]}"; do
      if ! child_running "$(<"$PIDS/$c.pid")"; then
        how_it_ended "$c"
        fail_with_log "$c" "$c exited ($ENDED) while waiting for $desc"
      fi
    done
    ((SECONDS < deadline)) || fail_with_log "$comp" "timed out after ${timeout}s waiting for $desc"
    sleep 0.5
  done
}

# pods can be created (ServiceAccount admission) and can start (their projected
# token volume needs the kube-root-ca.crt ConfigMap)
default_ns_ready() { kubectl_admin -n default get serviceaccount/default configmap/kube-root-ca.crt; }

cluster_healthy() { # MODE: the recorded cluster is complete and serving
  [[ -f $STATE/mode && $(<"$STATE/mode") == "$1" ]] || return 1
  # another version, other gates or instance, or an older build of a binary
  [[ -f $STATE/settings && $(<"$STATE/settings") == "$SETTINGS" ]] || return 1
  [[ -z ${EPHEMERA_CLUSTER_INSTANCE:-} || $EPHEMERA_CLUSTER_INSTANCE == "$INSTANCE" ]] || return 1
  [[ $(readlink "$BIN/kcluster" 2>/dev/null) == "$KCLUSTER" ]] || return 1
  [[ $(readlink "$BIN/kube-apiserver" 2>/dev/null) == "$KCLUSTER_K8S" ]] || return 1
  local c comps=("${CP_COMPONENTS[@]}")
  [[ $1 == full ]] && comps+=("${NODE_COMPONENTS[@]}")
  for c in "${comps[@]}"; do pid_of "$c" >/dev/null || return 1; done
  apiserver_ready || return 1
  if [[ $1 == full ]]; then node_ready || return 1; fi
}

check_ports_free() {
  local p name busy=""
  local -A ports=([$ETCD_CLIENT_PORT]=etcd [$ETCD_PEER_PORT]=etcd-peer [$APISERVER_PORT]=kube-apiserver
    [$KCM_PORT]=kube-controller-manager)
  if [[ $MODE == full ]]; then
    ports[$SCHEDULER_PORT]=kube-scheduler
    ports[$KUBELET_PORT]=kubelet
    ports[$KUBELET_HEALTHZ_PORT]=kubelet-healthz
  fi
  for p in "${!ports[@]}"; do
    name=${ports[$p]}
    if [[ -n $(ss -Hltn "sport = :$p" 2>/dev/null) ]]; then
      busy+=$'\n'"  port $p (for $name): $(ss -Hltnp "sport = :$p" | awk 'NR == 1 {print $4, $6}')"
    fi
  done
  [[ -z $busy ]] || die "ports needed by the cluster are in use:$busy"$'\n'"  (stop that, or move the cluster with EPHEMERA_*_PORT, see README.md)"
}

# ------------------------------------------------------------------- PKI ---
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# issue NAME SUBJECT EXTENSIONS: key + certificate signed by the cluster CA
issue() {
  local name=$1 subj=$2 ext=$3
  newkey "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  local ca=${CA_NAME:-ca}
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

gen_pki() {
  mkdir -p "$PKI" "$STATE/tokens"
  chmod 700 "$PKI"
  newkey "$PKI/ca.key"
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ephemera-test-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  local server="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth"
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  issue apiserver "/CN=kube-apiserver" \
    "$server\nsubjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue kubelet "/CN=$NODE_NAME" "$server\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  issue controller-manager "/CN=system:kube-controller-manager" "$client"
  issue scheduler "/CN=system:kube-scheduler" "$client"
  issue kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  # front proxy (aggregation layer): its own CA, so its client certificate
  # cannot authenticate as anyone directly
  newkey "$PKI/front-proxy-ca.key"
  openssl req -x509 -new -key "$PKI/front-proxy-ca.key" -subj "/CN=ephemera-front-proxy-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  CA_NAME=front-proxy-ca issue front-proxy-client "/CN=front-proxy-client" "$client"
  # service-account token signing key pair
  newkey "$PKI/sa.key"
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

  # static tokens: admin is cluster-admin, alice and bob have no RBAC at all
  local u
  : >"$PKI/tokens.csv"
  for u in admin alice bob; do
    openssl rand -hex 24 >"$STATE/tokens/$u"
    if [[ $u == admin ]]; then
      echo "$(<"$STATE/tokens/$u"),$u,$u-uid,\"system:masters\"" >>"$PKI/tokens.csv"
    else
      echo "$(<"$STATE/tokens/$u"),$u,$u-uid" >>"$PKI/tokens.csv"
    fi
  done
}

# kubeconfig_header: the part every kubeconfig of ours shares, up to its users.
kubeconfig_header() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ephemera
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
EOF
}

# cert_kubeconfig FILE USER CERTNAME
cert_kubeconfig() {
  {
    kubeconfig_header
    cat <<EOF
- name: $2
  user:
    client-certificate: $PKI/$3.crt
    client-key: $PKI/$3.key
contexts:
- name: $2
  context: {cluster: ephemera, user: $2}
current-context: $2
EOF
  } >"$1"
}

write_kubeconfigs() {
  cert_kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  cert_kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
  cert_kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client
  local u
  {
    kubeconfig_header
    for u in admin alice bob; do
      printf -- '- name: %s\n  user:\n    token: %s\n' "$u" "$(<"$STATE/tokens/$u")"
    done
    echo "contexts:"
    for u in admin alice bob; do
      printf -- '- name: %s\n  context: {cluster: ephemera, user: %s, namespace: default}\n' "$u" "$u"
    done
    echo "current-context: admin"
  } >"$KUBECONFIG_PATH"
  chmod 600 "$KUBECONFIG_PATH"
}

# ------------------------------------------------------------ components ---
start_control_plane() {
  start_bg etcd "$BIN/etcd" --name ephemera --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ephemera=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
  wait_until "etcd /health" 30 etcd etcd_healthy

  # --advertise-address must be an IP; loopback is fine for a one-host cluster,
  # but Endpoints may not hold loopback addresses, so the reconciler of the
  # `kubernetes` Service endpoints is off (nothing in-cluster needs it: there
  # is no kube-proxy, so Service IPs are not routed anyway).
  start_bg kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
    --cert-dir "$STATE/kube-apiserver" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    ${APISERVER_GATES:+--feature-gates "$APISERVER_GATES"} "${APISERVER_EXTRA[@]}" --profiling=false --v=1
  wait_until "kube-apiserver /readyz" 120 kube-apiserver apiserver_ready

  start_bg kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$STATE/kube-controller-manager" \
    --controllers '*' --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false \
    --kube-api-qps 100 --kube-api-burst 200 \
    "${INSECURE_PORT_OFF[@]}" "${GATE_FLAGS[@]}" --profiling=false --v=1
}

setup_cgroups() {
  # The kubelet puts pods under /$CGROUP_ROOT in every hierarchy; the root must
  # exist beforehand. cpuset needs cpus/mems copied from the parent.
  local h
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [[ -d $h ]] || continue
    mountpoint -q "$h" || continue
    mkdir -p "$h/$CGROUP_ROOT"
    if [[ -f $h/cpuset.cpus ]]; then
      cat "$h/cpuset.cpus" >"$h/$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

write_node_configs() {
  mkdir -p "$CONTAINERD_DIR"/{root,state,opt,runc} "$STATE/cni/net.d" "$STATE/cni/ipam" "$KUBELET_ROOT" "$STATE/pod-logs"
  cat >"$CONTAINERD_DIR/config.toml" <<EOF
# Private containerd for the ephemera test cluster; nothing here touches a
# system-wide containerd (/run/containerd, /var/lib/containerd).
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  disable_hugetlb_controller = true
  # This VM grants root every capability but CAP_SYS_RESOURCE, so nobody may
  # lower an oom_score_adj (the kubelet asks -998 for sandboxes): clamp it to
  # containerd's own value instead of failing every pod.
  restrict_oom_score_adj = true
  # network namespaces of pods under our state dir instead of /var/run/netns
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$SNAPSHOTTER"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$CONTAINERD_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF

  # No default route and no masquerading: pods reach only the bridge subnet
  # (the host is $POD_GATEWAY) and their own loopback.
  cat >"$STATE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GATEWAY"}]],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$STATE/resolv.conf"
  mkdir -p "$STATE/manifests"

  cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
$(version_before 1.27 || printf 'containerRuntimeEndpoint: %s\nimageServiceEndpoint: %s\n' "unix://$CONTAINERD_SOCK" "unix://$CONTAINERD_SOCK")
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
failSwapOn: false
$(version_before 1.31 || echo 'failCgroupV1: false')
makeIPTablesUtilChains: false
resolvConf: $STATE/resolv.conf
clusterDomain: cluster.local
# before 1.29 the kubelet keeps container logs in /var/log/pods, whatever it is told
$(version_before 1.29 || echo "podLogsDir: $STATE/pod-logs")
hairpinMode: hairpin-veth
serializeImagePulls: false
maxPods: 110
# never evict and never garbage-collect the locally imported images. Absolute
# floors: 1% of a large, busy build disk is gigabytes, and a node tainted with
# DiskPressure runs no test pod at all.
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "200Mi"
  nodefs.inodesFree: "1%"
  imagefs.available: "200Mi"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# static pods (their API mirrors are what tests of static-pod handling need)
staticPodPath: $STATE/manifests
# faster feedback for tests
syncFrequency: 10s
fileCheckFrequency: 2s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
# without CAP_SYS_RESOURCE (see the containerd config) the default -999 fails
oomScoreAdj: 0
EOF
}

pick_snapshotter() {
  # overlayfs needs a filesystem that supports it as upper dir; fall back to native.
  local d=$STATE/.overlay-test
  mkdir -p "$d"/{l,u,w,m}
  if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
    umount "$d/m"
    SNAPSHOTTER=overlayfs
  else
    log "overlayfs is not usable under $STATE; containerd uses the native snapshotter"
    SNAPSHOTTER=native
  fi
  rm -rf "$d"
  echo "$SNAPSHOTTER" >"$STATE/snapshotter"
}


import_images() {
  mkdir -p "$STATE/images"
  python3 "$CLUSTER_SRC/hack/mkimage.py" --busybox --tag "$BUSYBOX_IMAGE" --cmd sh --out "$STATE/images/busybox.tar"
  # pause: exits on TERM/INT, otherwise sleeps forever
  python3 "$CLUSTER_SRC/hack/mkimage.py" --busybox --tag "$PAUSE_IMAGE" --out "$STATE/images/pause.tar" \
    --entrypoint '["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 2147483647 & wait $!; done"]'
  local t
  for t in "$STATE/images/busybox.tar" "$STATE/images/pause.tar"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --snapshotter "$SNAPSHOTTER" "$t" >/dev/null \
      || die "ctr images import $t failed"
  done
}

start_node() {
  host_baseline
  sysctl -qw net.ipv4.ip_forward=1
  setup_cgroups
  pick_snapshotter
  write_node_configs

  start_bg containerd containerd --config "$CONTAINERD_DIR/config.toml"
  wait_until "containerd socket" 30 containerd containerd_ready
  import_images

  start_bg kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --cert-dir "$STATE/kube-scheduler" \
    --leader-elect=false "${INSECURE_PORT_OFF[@]}" "${GATE_FLAGS[@]}" --profiling=false --v=1

  # No --node-ip: the kubelet refuses a loopback --node-ip, but takes the
  # InternalIP from an IP-valued --hostname-override.
  local kubelet_flags=()
  [[ -z $KUBELET_GATES ]] || kubelet_flags+=(--feature-gates "$KUBELET_GATES")
  # Before 1.27 the runtime endpoint is a flag only, and before 1.24 the
  # kubelet talks to dockershim unless told the runtime is remote.
  if version_before 1.27; then
    kubelet_flags+=(--container-runtime-endpoint "unix://$CONTAINERD_SOCK")
    if version_before 1.24; then kubelet_flags+=(--container-runtime remote); fi
  fi
  start_bg kubelet "$BIN/kubelet" \
    --config "$STATE/kubelet-config.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" \
    --root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" \
    "${kubelet_flags[@]}" --v=2
}

# ------------------------------------------------------------- instances ---
# claim_instance: creates the state dir and claims an instance number for it
# (see lib.sh): EPHEMERA_CLUSTER_INSTANCE, 0 for the default dir, else the
# lowest free one from 1. Mode and instance are written before the lock is
# released, so that a down.sh elsewhere sees this node from the start.
claim_instance() {
  registry_lock
  local n d want=${EPHEMERA_CLUSTER_INSTANCE:-}
  [[ -n $want || $STATE != "$DEFAULT_STATE" ]] || want=0
  if [[ -n $want ]]; then
    if d=$(claim_dir "$want") && [[ $d != "$STATE" ]]; then
      die "instance $want is taken by the cluster in $d; choose another EPHEMERA_CLUSTER_INSTANCE or stop that one"
    fi
    n=$want
  else
    for ((n = 1; n <= MAX_INSTANCE; n++)); do
      # free: no live claim, and nothing else uses its bridge or API server port
      claim_dir "$n" >/dev/null && continue
      ip link show "cni-ephemera$n" >/dev/null 2>&1 && continue
      [[ -z $(ss -Hltn "sport = :$((16443 + 100 * n))" 2>/dev/null) ]] || continue
      break
    done
    ((n <= MAX_INSTANCE)) || die "all instances 1..$MAX_INSTANCE are taken (see $REGISTRY)"
  fi
  instance_vars "$n"
  mkdir -p "$STATE"
  echo "$n" >"$STATE/instance"
  echo "$MODE" >"$STATE/mode"
  touch "$STATE/.ephemera-cluster" # marker: down.sh only deletes directories carrying it
  echo "$STATE" >"$REGISTRY/instance-$n"
  registry_unlock
}

# host_baseline: records, once for all instances, what the host looked like
# before the first node started: the iptables chains, which host dirs did not
# exist, ip_forward. The last node instance's down.sh restores it. With no
# other node running, an old record (whose last node did not restore it,
# e.g. one started by scripts older than instances) is replaced.
host_baseline() {
  registry_lock
  if [[ ! -d $REGISTRY/baseline || -z $(other_nodes) ]]; then
    local tmp=$REGISTRY/baseline.tmp d
    rm -rf "$tmp" "$REGISTRY/baseline"
    mkdir -p "$tmp"
    iptables_chains >"$tmp/iptables-chains"
    for d in "${HOST_DIRS[@]}"; do [[ -e $d ]] || echo "$d"; done >"$tmp/host-dirs.created"
    sysctl -n net.ipv4.ip_forward >"$tmp/ip_forward"
    mv "$tmp" "$REGISTRY/baseline"
  fi
  registry_unlock
}

# ------------------------------------------------------------------- main ---
install_packages
ensure_binary
ensure_old_binary
[[ $MODE == deps ]] && { log "dependencies ready ($(elapsed))"; exit 0; }

if cluster_healthy "$MODE"; then
  log "cluster ($MODE) is already running in $STATE"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  exit 0
fi
if [[ -e $STATE ]]; then
  log "found a stopped, partial or different cluster (mode, version, gates, binaries) in $STATE; tearing it down"
  "$CLUSTER_SRC/down.sh"
fi

claim_instance
check_ports_free
mkdir -p "$LOGS" "$PIDS" "$BIN"
echo "$SETTINGS" >"$STATE/settings"
# etcd and kubectl are always the main build's; the Kubernetes components are
# the requested version's
for c in etcd kubectl cri-reset kcluster; do
  ln -sfn "$KCLUSTER" "$BIN/$c"
done
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  ln -sfn "$KCLUSTER_K8S" "$BIN/$c"
done

shown_gates=${GATES:+, gates $GATES}
[[ $MODE != full || $KUBELET_GATES == "$GATES" ]] || shown_gates+=", kubelet gates ${KUBELET_GATES:-(defaults)}"
log "starting $MODE cluster (Kubernetes $(k8s_version_in "${OLD_DIR:-$CLUSTER_SRC}")$shown_gates) as instance $INSTANCE (API server port $APISERVER_PORT) in $STATE"
gen_pki
write_kubeconfigs
start_control_plane
if [[ $MODE == full ]]; then
  start_node
  wait_until "node $NODE_NAME to be Ready" 180 kubelet node_ready
fi
wait_until "ServiceAccount default and ConfigMap kube-root-ca.crt in namespace default" 90 kube-controller-manager default_ns_ready

log "cluster ($MODE) is up in $(elapsed); logs in $LOGS; stop it with $CLUSTER_SRC/down.sh"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
