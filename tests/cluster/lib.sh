# shellcheck shell=bash
# shellcheck disable=SC2034 # variables are used by the scripts that source this file
# Shared settings and helpers for up.sh, down.sh, import-image.sh and acceptance.sh.
# Sourced, never run.

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

STATE=${EPHEMERA_CLUSTER_DIR:-/tmp/ephemera-cluster}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
STATE=${STATE%/}
export EPHEMERA_CLUSTER_DIR=$STATE
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/ephemera

# Ports, all bound to 127.0.0.1. Chosen away from the usual Kubernetes ports so
# that another local cluster (kind, minikube, a real kubelet) does not collide.
ETCD_CLIENT_PORT=${EPHEMERA_ETCD_PORT:-22379}
ETCD_PEER_PORT=${EPHEMERA_ETCD_PEER_PORT:-22380}
APISERVER_PORT=${EPHEMERA_APISERVER_PORT:-16443}
KCM_PORT=${EPHEMERA_KCM_PORT:-20257}
SCHEDULER_PORT=${EPHEMERA_SCHEDULER_PORT:-20259}
KUBELET_PORT=${EPHEMERA_KUBELET_PORT:-20250}
KUBELET_HEALTHZ_PORT=${EPHEMERA_KUBELET_HEALTHZ_PORT:-20248}

NODE_NAME=127.0.0.1
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
POD_SUBNET=10.87.0.0/16
POD_GATEWAY=10.87.0.1
CNI_NETWORK=ephemera
BRIDGE=cni-ephemera
CGROUP_ROOT=ephemera            # kubelet cgroupRoot is /$CGROUP_ROOT in every hierarchy
PAUSE_IMAGE=localhost/pause:3.10
BUSYBOX_IMAGE=localhost/busybox:1.36

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
# caches results in /var/lib/cni). down.sh removes them, sockets and empty
# directories only, if they did not exist before up.sh.
HOST_DIRS=(/var/lib/kubelet /var/lib/cni /run/containerd)

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
  identity=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null; tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null) || true
  [[ $identity == *"$STATE"* ]] || return 1
  echo "$pid"
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
