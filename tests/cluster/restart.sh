#!/usr/bin/env bash
# Stops and starts one component of a running test cluster, for fault tests:
# exactly the process recorded in $STATE/pids/COMPONENT.pid, started again with
# the command line that up.sh recorded in $STATE/pids/COMPONENT.cmd. Nothing
# else is touched.
#
#   tests/cluster/restart.sh [--kill] [--down SECONDS] COMPONENT   stop, wait SECONDS (default 0), start
#   tests/cluster/restart.sh --stop [--kill] COMPONENT              stop only
#   tests/cluster/restart.sh --start COMPONENT                      start a stopped one
#
# COMPONENT: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd or kubelet. Stopping sends TERM and waits up to $GRACE seconds
# (default 20) before KILL; --kill sends KILL at once (a crash). Starting waits
# until the component is ready again (etcd /health, kube-apiserver /readyz,
# the kubelet's /healthz, ...). Each step is logged with its time on stderr;
# the last line on stdout is `COMPONENT PID ready`, or `COMPONENT stopped`.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; }
ACTION=restart
SIGNAL=TERM
DOWN=0
COMPONENT=""
while (($#)); do
  case $1 in
    --stop) ACTION=stop ;;
    --start) ACTION=start ;;
    --kill) SIGNAL=KILL ;;
    --down)
      if (($# < 2)) || ! [[ $2 =~ ^[0-9]+([.][0-9]+)?$ ]]; then die "--down takes a number of seconds"; fi
      DOWN=$2
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option: $1 (see restart.sh --help)" ;;
    *) [[ -z $COMPONENT ]] || die "one component at a time"; COMPONENT=$1 ;;
  esac
  shift
done
[[ -n $COMPONENT ]] || die "which component? (see restart.sh --help)"
[[ " ${ALL_COMPONENTS[*]} " == *" $COMPONENT "* ]] || die "unknown component $COMPONENT; one of: ${ALL_COMPONENTS[*]}"
[[ $(id -u) == 0 ]] || die "restart.sh must run as root"
[[ -f $STATE/.ephemera-cluster && -n $INSTANCE ]] || die "no cluster in $STATE"

CMD_FILE=$PIDS/$COMPONENT.cmd
T0=${EPOCHREALTIME/./}
since() { local us=$((${EPOCHREALTIME/./} - T0)); printf '%d.%03ds' $((us / 1000000)) $((us % 1000000 / 1000)); }

# alive_threads PID: some thread of PID has not exited yet
alive_threads() {
  local stat state
  for stat in /proc/"$1"/task/*/stat; do
    state=$(awk '{print $3}' "$stat" 2>/dev/null) || continue
    [[ $state == Z ]] || return 0
  done
  return 1
}

stop_component() {
  local pid
  pid=$(pid_of "$COMPONENT") || die "$COMPONENT is not running in $STATE"
  # a cluster started before up.sh recorded command lines: take it from the process
  if [[ ! -s $CMD_FILE ]]; then
    cat "/proc/$pid/cmdline" >"$CMD_FILE.tmp" && mv "$CMD_FILE.tmp" "$CMD_FILE"
  fi
  kill -"$SIGNAL" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${GRACE:-20}))
  # Gone once no thread of it is left but a zombie: a leader that is a zombie
  # while its other threads still exit keeps its sockets (its ports) open.
  while alive_threads "$pid"; do
    if ((SECONDS >= deadline)); then
      log "$COMPONENT (pid $pid) still running after ${GRACE:-20}s of TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
    fi
    sleep 0.05
  done
  rm -f "$PIDS/$COMPONENT.pid"
  log "$COMPONENT (pid $pid) stopped by SIG$SIGNAL in $(since)"
}

ready() {
  case $COMPONENT in
    etcd) etcd_healthy ;;
    kube-apiserver) apiserver_ready ;;
    kube-controller-manager) secure_healthz "$KCM_PORT" ;;
    kube-scheduler) secure_healthz "$SCHEDULER_PORT" ;;
    containerd) containerd_ready ;;
    kubelet) kubelet_healthy ;;
  esac
}

start_component() {
  ! pid_of "$COMPONENT" >/dev/null || die "$COMPONENT is already running in $STATE"
  [[ -s $CMD_FILE ]] || die "no recorded command line for $COMPONENT ($CMD_FILE); was it started by up.sh?"
  local argv=()
  mapfile -d '' -t argv <"$CMD_FILE"
  spawn_daemon "$LOGS/$COMPONENT.log" "${argv[@]}"
  echo "$SPAWNED_PID" >"$PIDS/$COMPONENT.pid"
  local deadline=$((SECONDS + 120))
  until ready >/dev/null 2>&1; do
    if ! child_running "$SPAWNED_PID"; then
      show_log "$COMPONENT" 30
      die "$COMPONENT exited while starting again"
    fi
    ((SECONDS < deadline)) || { show_log "$COMPONENT" 30; die "$COMPONENT not ready 120s after starting again"; }
    sleep 0.1
  done
  log "$COMPONENT started again (pid $SPAWNED_PID), ready after $(since)"
  echo "$COMPONENT $SPAWNED_PID ready"
}

case $ACTION in
  stop) stop_component; echo "$COMPONENT stopped" ;;
  start) start_component ;;
  restart)
    stop_component
    sleep "$DOWN"
    start_component
    ;;
esac
