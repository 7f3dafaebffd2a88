#!/usr/bin/env bash
# Stops the local ephemera test cluster started by up.sh and removes its state
# directory (${EPHEMERA_CLUSTER_DIR:-/tmp/ephemera-cluster}): pods and their
# network namespaces, the recorded processes, containerd shims, mounts, its
# cni-ephemera bridge, its cgroups, its pod logs. Other instances (clusters in
# other state dirs) are left alone; the last node instance to stop also
# removes the iptables chains and host dirs that the nodes created and
# restores ip_forward. Harmless when nothing is running.
#
#   tests/cluster/down.sh         the cluster in $EPHEMERA_CLUSTER_DIR
#   tests/cluster/down.sh --all   every cluster on this machine (e.g. for CI)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# A command that fails under set -e says nothing by itself: name it (-E: in functions too).
set -E
trap 'log "failed (rc $?) at down.sh line $LINENO: $BASH_COMMAND"' ERR

[[ $(id -u) == 0 ]] || die "down.sh must run as root"
case ${1:-} in
  "") ;;
  --all)
    # every claimed instance, then the default dir (whose cluster may be older
    # than instances and hold no claim)
    rc=0
    for f in "$REGISTRY"/instance-*; do
      [[ -s $f ]] || continue
      d=$(<"$f")
      # a claim whose dir is gone (removed by hand) is just dropped
      claim_dir "${f##*/instance-}" >/dev/null || { rm -f "$f"; continue; }
      [[ $d == "$DEFAULT_STATE" ]] && continue
      EPHEMERA_CLUSTER_DIR=$d EPHEMERA_CLUSTER_INSTANCE="" "$0" || rc=1
    done
    EPHEMERA_CLUSTER_DIR=$DEFAULT_STATE EPHEMERA_CLUSTER_INSTANCE="" "$0" || rc=1
    exit "$rc"
    ;;
  *) die "unknown argument: $1 (usage: down.sh [--all])" ;;
esac

T0=$SECONDS

# ------------------------------------------------------------------ helpers ---
# stop_pids NAME...: TERM the recorded processes, wait up to $GRACE seconds
# (default 20), then KILL.
stop_pids() {
  local name pid pids=() names=()
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
  done
  ((${#pids[@]})) || return 0
  log "stopping ${names[*]}"
  local grace=${GRACE:-20} alive
  local deadline=$((SECONDS + grace))
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && alive+=("$pid")
    done
    ((${#alive[@]})) || break
    if ((SECONDS >= deadline)); then
      log "still running after ${grace}s, sending KILL: ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  for name in "${names[@]}"; do rm -f "$PIDS/$name.pid"; done
}

# our_shims: containerd-shim processes serving our containerd (their command
# line carries the private socket address)
our_shims() { pgrep -f -- "containerd-shim.* -address $CONTAINERD_SOCK( |$)" || true; }

# mounts_under DIR: mount points at or below DIR, deepest first
mounts_under() {
  awk -v d="$1" '{
      m = $5
      gsub(/\\040/, " ", m); gsub(/\\011/, "\t", m); gsub(/\\012/, "\n", m); gsub(/\\134/, "\\", m)
      if (m == d || index(m, d "/") == 1) print length(m) "\t" m
    }' /proc/self/mountinfo | sort -rn | cut -f2- | uniq
}

unmount_all() {
  local m left
  for _ in 1 2 3 4 5; do
    left=$(mounts_under "$STATE")
    [[ -n $left ]] || return 0
    while IFS= read -r m; do
      [[ -n $m ]] || continue
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<<"$left"
  done
  left=$(mounts_under "$STATE")
  [[ -z $left ]] || die "could not unmount: $left"
}

cgroup_dirs() {
  instance_is_ours || return 0
  local h
  for h in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do [[ -d $h ]] && echo "$h"; done
  return 0
}

# processes still inside the kubelet's cgroup root (containers whose shim is gone)
cgroup_procs() {
  local d
  while IFS= read -r d; do
    [[ -n $d ]] || continue
    # a cgroup that goes away meanwhile (its last process exited) has nothing left to kill
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done < <(cgroup_dirs) | sort -un
}

remove_cgroups() {
  local pids d
  pids=$(cgroup_procs)
  if [[ -n $pids ]]; then
    log "killing processes left in the cluster's cgroups: ${pids//$'\n'/ }"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  while IFS= read -r d; do
    [[ -n $d ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d $d ]] || log "warning: could not remove cgroup $d"
  done < <(cgroup_dirs)
}

# instance_is_ours: the bridge and cgroups of our instance number are ours to
# remove: no other live cluster claims the number (only by hand, with
# EPHEMERA_CLUSTER_INSTANCE), and a state dir of scripts older than instances
# (no instance file, so number 0) is taken for the owner only while no other
# node runs, since the default cluster may be of that kind too
instance_is_ours() {
  [[ -n $INSTANCE ]] || return 1
  local d
  if d=$(claim_dir "$INSTANCE") && [[ $d != "$STATE" ]]; then return 1; fi
  [[ -s $STATE/instance || -z $(other_nodes) ]]
}

remove_bridge() {
  [[ -n $INSTANCE ]] || return 0
  ip link show "$BRIDGE" >/dev/null 2>&1 || return 0
  if ! instance_is_ours; then
    log "warning: bridge $BRIDGE and cgroups /$CGROUP_ROOT may belong to another running cluster; leaving them"
    return 0
  fi
  local v
  # veths still enslaved to the bridge (their netns leaked) go first
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null || true
  done
  ip link del "$BRIDGE"
  log "removed bridge $BRIDGE"
}

# remove_chains "TABLE CHAIN" lines: drop the jumps into each, flush, delete
remove_chains() {
  local chains=$1 t c rule
  [[ -n $chains ]] || return 0
  log "removing iptables chains: $(echo "$chains" | awk '{print $1"/"$2}' | tr '\n' ' ')"
  while read -r t c; do
    # drop jumps into the chain, then flush it
    iptables -t "$t" -S 2>/dev/null | grep -E -- "-j $c( |$)" | while IFS= read -r rule; do
      eval "iptables -t $t ${rule/#-A/-D}" 2>/dev/null || true
    done || true
    iptables -t "$t" -F "$c" 2>/dev/null || true
  done <<<"$chains"
  while read -r t c; do iptables -t "$t" -X "$c" 2>/dev/null || true; done <<<"$chains"
}

# our_portmap_chains: the per-sandbox chains of the portmap plugin for our
# sandboxes ("CNI-DN-" + sha512(network name + sandbox ID), cut to 28
# characters), left behind only when CNI DEL could not run
our_portmap_chains() {
  local sb h
  for sb in "$CONTAINERD_DIR/root/io.containerd.grpc.v1.cri/sandboxes/"*; do
    [[ -d $sb ]] || continue
    h=$(printf '%s' "$CNI_NETWORK${sb##*/}" | sha512sum | cut -c1-21)
    echo "nat CNI-DN-$h"
  done
}

# existing_chains "TABLE CHAIN" lines: those that exist
existing_chains() { LC_ALL=C comm -12 <(LC_ALL=C sort -u <<<"$1") <(iptables_chains) | sed '/^$/d'; }

# new_chains BEFORE_FILE: the CNI-*/KUBE-* chains that are not in BEFORE_FILE
new_chains() { LC_ALL=C comm -13 "$1" <(iptables_chains) | awk '$2 ~ /^(CNI-|KUBE-)/'; }

# libcni's result cache of our sandboxes, left behind when CNI DEL could not
# run (containerd was dead): files named after our network or our sandbox IDs
remove_cni_cache() {
  local dir=/var/lib/cni/results sb
  [[ -d $dir ]] || return 0
  rm -f "$dir/$CNI_NETWORK-"*
  for sb in "$CONTAINERD_DIR/root/io.containerd.grpc.v1.cri/sandboxes/"*; do
    [[ -d $sb ]] && rm -f "$dir/"*"-${sb##*/}-"*
  done
  return 0
}

# remove_pod_logs: what our kubelet left in the shared /var/log: the pod log
# dirs /var/log/pods/NS_POD_UID of our pods (kubelets before 1.29 always keep
# logs there) and the links in /var/log/containers into them or into $STATE
remove_pod_logs() {
  local -A ours=()
  local d uid f t
  for d in "$KUBELET_ROOT"/pods/*/; do
    [[ -d $d ]] || continue
    d=${d%/}
    ours[${d##*/}]=1
  done
  for d in /var/log/pods/*_*; do
    [[ -d $d ]] || continue
    uid=${d##*_}
    [[ -n ${ours[$uid]:-} ]] && rm -rf -- "$d"
  done
  for f in /var/log/containers/*; do
    # another kubelet may remove its link between the test and the read
    t=$(readlink -- "$f") || continue
    case $t in
      "$STATE"/*) rm -f -- "$f" ;;
      /var/log/pods/*)
        uid=${t#/var/log/pods/}; uid=${uid%%/*}; uid=${uid##*_}
        [[ -z ${ours[$uid]:-} ]] || rm -f -- "$f"
        ;;
    esac
  done
  return 0
}

# remove_host_dirs FILE: of the host directories listed in FILE (those that did
# not exist before), remove the sockets and empty directories left in them
# (anything else means someone else uses them)
remove_host_dirs() {
  local d
  [[ -f $1 ]] || return 0
  while IFS= read -r d; do
    [[ -n $d && -d $d ]] || continue
    find "$d" -depth \( -type s -o -type d -empty \) -delete 2>/dev/null || true
    [[ ! -e $d ]] || log "note: $d is not empty, left in place"
  done <"$1"
}

# restore_host: what all node instances share. Ours alone goes now (our
# sandboxes' portmap chains); the rest only when no other node runs: the
# chains that the nodes created, the host dirs, ip_forward, as recorded in the
# registry's baseline (or, for a state dir of scripts older than instances,
# in the state dir itself).
restore_host() {
  local others base
  command -v iptables-save >/dev/null && remove_chains "$(existing_chains "$(our_portmap_chains)")"
  others=$(other_nodes)
  if [[ -n $others ]]; then
    log "other nodes still run, so shared iptables chains, host dirs and ip_forward stay:"$'\n'"    ${others//$'\n'/$'\n'    }"
    return 0
  fi
  if [[ -d $REGISTRY/baseline ]]; then
    base=$REGISTRY/baseline
    [[ -f $base/iptables-chains ]] && command -v iptables-save >/dev/null && remove_chains "$(new_chains "$base/iptables-chains")"
    remove_host_dirs "$base/host-dirs.created"
    [[ -f $base/ip_forward ]] && { sysctl -qw "net.ipv4.ip_forward=$(<"$base/ip_forward")" || true; }
    rm -rf "$base"
  else
    [[ -f $STATE/iptables-chains.before ]] && command -v iptables-save >/dev/null && remove_chains "$(new_chains "$STATE/iptables-chains.before")"
    remove_host_dirs "$STATE/host-dirs.created"
    [[ -f $STATE/ip_forward.orig ]] && { sysctl -qw "net.ipv4.ip_forward=$(<"$STATE/ip_forward.orig")" || true; }
  fi
  return 0
}

# --------------------------------------------------------------------- main ---
if [[ ! -e $STATE ]]; then
  # A bridge of our name without a state dir is a leftover only if nothing
  # uses it: no veth on it and no node running at all (a cluster of older
  # scripts holds no claim, so a claim check alone could delete its bridge).
  if [[ -n $INSTANCE ]] && ip link show "$BRIDGE" >/dev/null 2>&1; then
    if [[ -z $(ip -o link show master "$BRIDGE" 2>/dev/null) && -z $(other_nodes) ]]; then
      remove_bridge
    else
      log "bridge $BRIDGE may belong to a running cluster (it has veths, or other nodes run); leaving it"
    fi
  fi
  log "no cluster state in $STATE; nothing to stop"
  exit 0
fi
[[ -f $STATE/.ephemera-cluster ]] ||
  die "$STATE exists but is not an ephemera cluster directory (no .ephemera-cluster marker); refusing to touch it"

# 1. processes that tests or demos recorded next to ours ($PIDS/NAME.pid, e.g.
#    the operator), then the kubelet, so it does not restart pods we remove
extra=()
for f in "$PIDS"/*.pid; do
  [[ -e $f ]] || continue
  name=${f##*/}; name=${name%.pid}
  [[ " ${ALL_COMPONENTS[*]} " == *" $name "* ]] || extra+=("$name")
done
((${#extra[@]} == 0)) || stop_pids "${extra[@]}"
stop_pids kubelet

# 2. pods through CRI (runs CNI DEL, removes netns, shm and rootfs mounts),
#    then anything else in containerd (e.g. containers made with `ctr run`)
if pid_of containerd >/dev/null; then
  if [[ -x $BIN/cri-reset ]]; then
    "$BIN/cri-reset" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 60s >&2 ||
      log "warning: cri-reset did not remove every pod (continuing)"
  fi
  ctr_() { timeout 30 ctr --address "$CONTAINERD_SOCK" "$@"; }
  for ns in $(ctr_ namespaces ls -q 2>/dev/null || true); do
    for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null || true); do
      ctr_ -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctr_ -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
    done
    for c in $(ctr_ -n "$ns" containers ls -q 2>/dev/null || true); do
      ctr_ -n "$ns" containers rm "$c" >/dev/null 2>&1 || true
    done
  done
fi

# 3. every recorded process, newest first. The scheduler keeps no state, and
#    those of 1.22 to 1.24 never exit on TERM without leader election (their
#    scheduling loop stays blocked in the queue's Pop), so it gets 2 s.
GRACE=2 stop_pids kube-scheduler
stop_pids kube-controller-manager containerd
stop_pids kube-apiserver
stop_pids etcd

# 4. shims of our containerd that are still there (containerd died early, or
#    a container would not stop), then whatever still runs in our cgroups
shims=$(our_shims)
if [[ -n $shims ]]; then
  log "killing leftover containerd shims: ${shims//$'\n'/ }"
  # shellcheck disable=SC2086
  kill -KILL $shims 2>/dev/null || true
fi
remove_cgroups

# 5. mounts, bridge, our CNI cache and pod logs, then (under the registry lock,
#    so that no node starts meanwhile) what all nodes share, and our claim
unmount_all
remove_bridge
remove_cni_cache
remove_pod_logs
registry_lock
restore_host
if [[ -n $INSTANCE && $(cat "$REGISTRY/instance-$INSTANCE" 2>/dev/null) == "$STATE" ]]; then
  rm -f "$REGISTRY/instance-$INSTANCE"
fi

left=$(pgrep -af -- "$STATE(/| |$)" | grep -v -- "^$$ " || true)
[[ -z $left ]] || log "warning: processes still mention $STATE:"$'\n'"$left"

# 6. the state directory (never crossing into a filesystem still mounted below it)
rm -rf --one-file-system "$STATE"
registry_unlock
log "cluster in $STATE stopped and removed ($((SECONDS - T0))s)"
