#!/usr/bin/env bash
# Stops the local ephemera test cluster started by up.sh and removes its state
# directory (${EPHEMERA_CLUSTER_DIR:-/tmp/ephemera-cluster}): pods and their
# network namespaces, the recorded processes, containerd shims, mounts, the
# cni-ephemera bridge, iptables chains the cluster created, its cgroups.
# Harmless when nothing is running.
#
#   tests/cluster/down.sh
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) == 0 ]] || die "down.sh must run as root"

T0=$SECONDS

# ------------------------------------------------------------------ helpers ---
# stop_pids NAME...: TERM the recorded processes, wait up to 20s, then KILL.
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
  local deadline=$((SECONDS + 20)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && alive+=("$pid")
    done
    ((${#alive[@]})) || break
    if ((SECONDS >= deadline)); then
      log "still running after 20s, sending KILL: ${alive[*]}"
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

cgroup_dirs() { local h; for h in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do [[ -d $h ]] && echo "$h"; done; return 0; }

# processes still inside the kubelet's cgroup root (containers whose shim is gone)
cgroup_procs() {
  local d
  while IFS= read -r d; do
    [[ -n $d ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
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

remove_bridge() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || return 0
  local v
  # veths still enslaved to the bridge (their netns leaked) go first
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null || true
  done
  ip link del "$BRIDGE"
  log "removed bridge $BRIDGE"
}

# remove iptables chains named CNI-*/KUBE-* that appeared while the cluster ran
remove_iptables_chains() {
  local before=$STATE/iptables-chains.before
  [[ -f $before ]] && command -v iptables-save >/dev/null || return 0
  local new t c rule
  new=$(LC_ALL=C comm -13 "$before" <(iptables_chains) | awk '$2 ~ /^(CNI-|KUBE-)/')
  [[ -n $new ]] || return 0
  log "removing iptables chains created by the cluster: $(echo "$new" | awk '{print $1"/"$2}' | tr '\n' ' ')"
  while read -r t c; do
    # drop jumps into the chain, then flush it
    iptables -t "$t" -S 2>/dev/null | grep -E -- "-j $c( |$)" | while IFS= read -r rule; do
      eval "iptables -t $t ${rule/#-A/-D}" 2>/dev/null || true
    done || true
    iptables -t "$t" -F "$c" 2>/dev/null || true
  done <<<"$new"
  while read -r t c; do iptables -t "$t" -X "$c" 2>/dev/null || true; done <<<"$new"
}

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

# host directories that did not exist before up.sh: remove the sockets and
# empty directories left in them (anything else means someone else uses them)
remove_host_dirs() {
  local d
  [[ -f $STATE/host-dirs.created ]] || return 0
  while IFS= read -r d; do
    [[ -n $d && -d $d ]] || continue
    find "$d" -depth \( -type s -o -type d -empty \) -delete 2>/dev/null || true
    [[ ! -e $d ]] || log "note: $d is not empty, left in place"
  done <"$STATE/host-dirs.created"
}

# --------------------------------------------------------------------- main ---
if [[ ! -e $STATE ]]; then
  remove_bridge
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

# 3. every recorded process, newest first
stop_pids kube-scheduler kube-controller-manager containerd
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

# 5. mounts, bridge, iptables, sysctl
unmount_all
remove_bridge
remove_iptables_chains
remove_cni_cache
remove_host_dirs
if [[ -f $STATE/ip_forward.orig ]]; then
  sysctl -qw "net.ipv4.ip_forward=$(<"$STATE/ip_forward.orig")" || true
fi

left=$(pgrep -af -- "$STATE" | grep -v -- "^$$ " || true)
[[ -z $left ]] || log "warning: processes still mention $STATE:"$'\n'"$left"

# 6. the state directory (never crossing into a filesystem still mounted below it)
rm -rf --one-file-system "$STATE"
log "cluster in $STATE stopped and removed ($((SECONDS - T0))s)"
