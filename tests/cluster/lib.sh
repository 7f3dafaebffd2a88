# shellcheck shell=bash
# shellcheck disable=SC2034 # variables are used by the scripts that source this file
# Shared settings and helpers for up.sh, down.sh, import-image.sh and acceptance.sh.
# Sourced, never run.

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

DEFAULT_STATE=/tmp/ephemera-cluster
STATE=${EPHEMERA_CLUSTER_DIR:-$DEFAULT_STATE}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
STATE=${STATE%/}
export EPHEMERA_CLUSTER_DIR=$STATE
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/ephemera

# ---------------------------------------------------------------- instances ---
# Several clusters may run on one machine, each in its own state dir. What they
# would otherwise share (ports, the CNI bridge and network name, the pod
# subnet, the kubelet's cgroup root) derives from an instance number N:
#
#   N = 0: the default dir /tmp/ephemera-cluster: ports 16443, 22379, ...,
#          bridge cni-ephemera, network ephemera, 10.87.0.0/16, cgroup /ephemera
#   N > 0: every port + 100*N, bridge cni-ephemeraN, network ephemeraN,
#          10.(87+N).0.0/16, cgroup /ephemeraN
#
# up.sh picks N for any other dir (the lowest free one from 1), unless
# EPHEMERA_CLUSTER_INSTANCE=N says which, and records it in $STATE/instance,
# which wins from then on. Claims live in $REGISTRY, which also holds what the
# host looked like before the first node of any instance started (iptables
# chains, host dirs, ip_forward), so that only the last one restores it.
REGISTRY=/run/ephemera-clusters
MAX_INSTANCE=49

# instance_vars N: sets everything that derives from the instance number.
# EPHEMERA_*_PORT still override single ports.
instance_vars() {
  INSTANCE=$1
  local off=$((100 * INSTANCE)) sfx=""
  ((INSTANCE == 0)) || sfx=$INSTANCE
  # Ports, all bound to 127.0.0.1. Chosen away from the usual Kubernetes ports
  # so that another local cluster (kind, minikube, a real kubelet) does not
  # collide; the bases differ modulo 100, so no two instances ever collide.
  ETCD_CLIENT_PORT=${EPHEMERA_ETCD_PORT:-$((22379 + off))}
  ETCD_PEER_PORT=${EPHEMERA_ETCD_PEER_PORT:-$((22380 + off))}
  APISERVER_PORT=${EPHEMERA_APISERVER_PORT:-$((16443 + off))}
  KCM_PORT=${EPHEMERA_KCM_PORT:-$((20257 + off))}
  SCHEDULER_PORT=${EPHEMERA_SCHEDULER_PORT:-$((20259 + off))}
  KUBELET_PORT=${EPHEMERA_KUBELET_PORT:-$((20250 + off))}
  KUBELET_HEALTHZ_PORT=${EPHEMERA_KUBELET_HEALTHZ_PORT:-$((20248 + off))}
  POD_SUBNET=10.$((87 + INSTANCE)).0.0/16
  POD_GATEWAY=10.$((87 + INSTANCE)).0.1
  # "ephemera" and "ephemeraN": no name is a prefix of another up to the "-"
  # that libcni puts after it in its cache files (down.sh globs NAME-*)
  CNI_NETWORK=ephemera$sfx
  BRIDGE=cni-ephemera$sfx
  CGROUP_ROOT=ephemera$sfx # kubelet cgroupRoot is /$CGROUP_ROOT in every hierarchy
}

INSTANCE=""
if [[ -s $STATE/instance ]]; then
  instance_vars "$(<"$STATE/instance")"
elif [[ -n ${EPHEMERA_CLUSTER_INSTANCE:-} ]]; then
  if ! [[ $EPHEMERA_CLUSTER_INSTANCE =~ ^[0-9]+$ ]] || ((EPHEMERA_CLUSTER_INSTANCE > MAX_INSTANCE)); then
    printf '[ephemera-cluster] ERROR: EPHEMERA_CLUSTER_INSTANCE must be 0..%s\n' "$MAX_INSTANCE" >&2
    exit 1
  fi
  instance_vars "$EPHEMERA_CLUSTER_INSTANCE"
elif [[ $STATE == "$DEFAULT_STATE" || -e $STATE/.ephemera-cluster ]]; then
  # the default dir, or a state dir of a harness before instances (all 0)
  instance_vars 0
fi
# else: a new dir; up.sh allocates its number (INSTANCE stays empty until then)

NODE_NAME=127.0.0.1
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
PAUSE_IMAGE=localhost/pause:3.10
BUSYBOX_IMAGE=localhost/busybox:1.36

# ----------------------------------------------------------------- versions ---
# The main build (go.mod next to this file) and one module per older minor
# version under k8s/vMAJOR.MINOR, see README.md.

# k8s_version_in DIR: the k8s.io/kubernetes version that DIR/go.mod requires
k8s_version_in() { awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}' "$1/go.mod"; }

MAIN_VERSION=$(k8s_version_in "$CLUSTER_SRC") # v1.34.4
MAIN_MINOR=${MAIN_VERSION#v}; MAIN_MINOR=${MAIN_MINOR%.*}

# old_minors: the minor versions that have a module under k8s/, oldest first
old_minors() {
  local d
  for d in "$CLUSTER_SRC"/k8s/v*/; do [[ -f $d/go.mod ]] && { d=${d%/}; echo "${d##*/v}"; }; done | sort -V
}

# version_ldflags VERSION: make /version, `kubectl version` and the node
# report the real version instead of v0.0.0-master
version_ldflags() {
  local v=$1 major minor pkg flags=""
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "${flags# }"
}

# Old versions: without the in-tree cloud providers (and, before 1.24, without
# dockershim), which only cost download and build time here. Their
# dependencies reach into the runtime by go:linkname (modern-go/reflect2 and
# others), which Go >= 1.23 refuses unless -checklinkname=0.
OLD_BUILD_TAGS=providerless,dockerless
old_build_ldflags() { echo "-checklinkname=0 $(version_ldflags "$1")"; }

PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
BIN=$STATE/bin
KUBECONFIG_PATH=$STATE/kubeconfig
CONTAINERD_DIR=$STATE/containerd
CONTAINERD_SOCK=$CONTAINERD_DIR/containerd.sock
KUBELET_ROOT=$STATE/kubelet

# Host directories that the kubelet, containerd's shims or CNI create outside
# the state dir no matter how they are configured (the kubelet's device-plugin
# socket dir is hard-coded, shim sockets live in /run/containerd/s, libcni
# caches results in /var/lib/cni, the kubelet links container logs in
# /var/log/containers and, before 1.29, keeps them in /var/log/pods). Every
# instance shares them: down.sh removes our own entries, and the last node
# instance to stop removes the directories (sockets and empty directories
# only) that did not exist before the first one started.
HOST_DIRS=(/var/lib/kubelet /var/lib/cni /run/containerd /var/log/containers /var/log/pods)

# Processes in start order; down.sh stops them in reverse order.
CP_COMPONENTS=(etcd kube-apiserver kube-controller-manager)
NODE_COMPONENTS=(containerd kube-scheduler kubelet)
ALL_COMPONENTS=("${CP_COMPONENTS[@]}" "${NODE_COMPONENTS[@]}")

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

log() { printf '[ephemera-cluster] %s\n' "$*" >&2; }
die() { printf '[ephemera-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# pid_of NAME: prints the PID recorded in $PIDS/NAME.pid if that process is
# alive and really ours (its command line or environment names the state dir,
# which guards against PID reuse), else fails.
pid_of() {
  local f=$PIDS/$1.pid pid
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # read whole, not piped into `grep -q`: under pipefail the writer's SIGPIPE
  # after an early match would report a live process as gone
  local identity
  # (2>/dev/null first: it must also cover the redirection of a zombie's files)
  identity=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline"; tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || true
  # "$STATE/..." in an argument, or "...=$STATE" ending one: /tmp/x2 is not /tmp/x
  [[ $identity == *"$STATE/"* || $identity == *"$STATE"$'\n'* ]] || return 1
  echo "$pid"
}

# child_running PID: a child of this shell that has not exited. Its PID cannot
# be reused before this shell waits for it, so no identity check: pid_of's
# fails between fork and exec, and `wait` on that live child never returned.
# An exited child stays a zombie until waited for.
child_running() {
  local stat
  { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# spawn_daemon LOGFILE CMD...: runs CMD in its own session, appending its
# output to LOGFILE; sets SPAWNED_PID. The daemon gets none of the caller's
# other descriptors: not a lock (flock(1) around the caller would stay locked
# for the daemon's lifetime), not a pipe (`make demo | tee` would never end).
spawn_daemon() {
  local log=$1; shift
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if ((fd > 2 && fd < 255)); then eval "exec $fd>&-"; fi
    done
    exec setsid "$@" >>"$log" 2>&1 </dev/null
  ) &
  SPAWNED_PID=$!
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" --context admin "$@"; }

# Readiness of the components (up.sh waits for them, restart.sh too).
api_get() { # PATH: GET on the apiserver as admin
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $(cat "$STATE/tokens/admin")" \
    "https://127.0.0.1:$APISERVER_PORT$1"
}
apiserver_ready() { [[ $(api_get /readyz) == ok ]]; }
node_ready() {
  [[ $(kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
etcd_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
containerd_ready() { ctr --address "$CONTAINERD_SOCK" version; }
kubelet_healthy() { [[ $(curl -fsS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz") == ok ]]; }
# the controller-manager's and scheduler's /healthz (self-signed serving certificates)
secure_healthz() { [[ $(curl -fsSk --max-time 3 "https://127.0.0.1:$1/healthz") == ok ]]; }

# show_log NAME [LINES]
show_log() {
  local f=$LOGS/$1.log
  if [[ -f $f ]]; then
    printf -- '----- last %s lines of %s -----\n' "${2:-30}" "$f" >&2
    tail -n "${2:-30}" "$f" >&2
    printf -- '----- end of %s -----\n' "$f" >&2
  else
    printf -- '(no log file %s)\n' "$f" >&2
  fi
}

# iptables_chains: "TABLE CHAIN" for every chain that exists, sorted
iptables_chains() {
  { iptables-save 2>/dev/null || true; } | awk '/^\*/{t=substr($0,2)} /^:/{print t, substr($1,2)}' | LC_ALL=C sort -u
}

# ----------------------------------------------------------------- registry ---
# $REGISTRY/instance-N holds the state dir that claimed instance N;
# $REGISTRY/baseline/ what the host looked like before the first node started.
# Both are read and changed only under registry_lock (descriptor 8).
registry_lock() { mkdir -p "$REGISTRY"; exec 8>"$REGISTRY/lock"; flock 8; }
registry_unlock() { exec 8>&-; }

# claim_dir N: prints the state dir holding instance N, if its claim is live:
# the dir still exists, is a cluster dir and records N (a cluster that died
# without down.sh keeps its claim until down.sh or up.sh cleans it up)
claim_dir() {
  local f=$REGISTRY/instance-$1 d
  [[ -s $f ]] || return 1
  d=$(<"$f")
  [[ -f $d/.ephemera-cluster && -s $d/instance && $(<"$d/instance") == "$1" ]] || return 1
  echo "$d"
}

# other_nodes: one line for each other user of what all node instances share
# (host dirs, the CNI-*/KUBE-* iptables chains, ip_forward): live claims in
# full mode, and any kubelet, containerd or shim not ours, such as a cluster
# started by scripts older than instances, or a system containerd
other_nodes() {
  local f n d pid args
  for f in "$REGISTRY"/instance-*; do
    [[ -e $f ]] || continue
    n=${f##*/instance-}
    d=$(claim_dir "$n") || continue
    [[ $d != "$STATE" && $(cat "$d/mode" 2>/dev/null) == full ]] && echo "instance $n ($d)"
  done
  # process names are at most 15 characters: containerd-shim-runc-v2 shows as containerd-shim
  for pid in $(pgrep -x 'kubelet|containerd|containerd-shim' 2>/dev/null || true); do
    args=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
    [[ -n $args && $args != *"$STATE/"* ]] && echo "pid $pid: ${args:0:100}"
  done
  return 0
}
