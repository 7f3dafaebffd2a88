#!/usr/bin/env bash
# Acceptance test of the local test cluster on this machine: brings up a
# control-plane-only cluster and a full one, runs `kubectl debug` against a
# real pod (batch and interactive through tmux), then tears everything down
# and checks that nothing is left. Tears down any cluster already running in
# ${EPHEMERA_CLUSTER_DIR:-/tmp/ephemera-cluster}.
#
#   tests/cluster/acceptance.sh
#
# Exits non-zero if any check failed; the last line is "N passed, M failed".
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UP=$CLUSTER_SRC/up.sh
DOWN=$CLUSTER_SRC/down.sh
K=$BIN/kubectl
export KUBECONFIG=$KUBECONFIG_PATH
TMUX_SOCK=ephemera-acc-$$
WORK=$(mktemp -d /tmp/ephemera-acc.XXXXXX)
PASS=0
FAIL=0
T_ALL=${EPOCHREALTIME/./}

pass() { PASS=$((PASS + 1)); printf '  PASS  %s\n' "$*"; }
fail() { FAIL=$((FAIL + 1)); printf '  FAIL  %s\n' "$*"; }
check() { # DESCRIPTION CMD...
  local d=$1; shift
  if "$@"; then pass "$d"; else fail "$d"; fi
}
section() { printf '\n== %s\n' "$*"; }
now_us() { echo "${EPOCHREALTIME/./}"; }
secs() { local us=$(($(now_us) - $1)); printf '%d.%ds' $((us / 1000000)) $((us % 1000000 / 100000)); }
tm() { tmux -L "$TMUX_SOCK" "$@"; }

finish() {
  trap - EXIT
  tm kill-server >/dev/null 2>&1 || true
  rm -rf "$WORK"
  printf '\nacceptance total time: %s\n' "$(secs "$T_ALL")"
  echo "$PASS passed, $FAIL failed"
  exit $((FAIL > 0 ? 1 : 0))
}
trap finish EXIT
trap 'fail "interrupted"; exit 1' INT TERM

# poll TIMEOUT_S CMD...: until CMD succeeds
poll() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# processes of this cluster: naming its state dir in their command line, or
# shims of its containerd (other clusters may run at the same time)
ours_running() {
  pgrep -a -f -- "$STATE(/| |\$)|containerd-shim.* -address $CONTAINERD_SOCK( |\$)" | grep -v "^$$ " || true
}
no_leftovers() { [[ -z $(ours_running) ]]; }

# up MODE_ARGS...: run up.sh, store its duration in UP_TIME, check the export line
up() {
  local t0 rc out
  t0=$(now_us)
  out=$("$UP" "$@" 2>"$WORK/up.err")
  rc=$?
  UP_TIME=$(secs "$t0")
  if ((rc != 0)); then
    cat "$WORK/up.err"
    return 1
  fi
  [[ $(tail -n1 <<<"$out") == "export KUBECONFIG=$KUBECONFIG_PATH" ]] || {
    echo "unexpected last line: $(tail -n1 <<<"$out")"
    return 1
  }
  # a state dir other than the default one gets its instance number (bridge,
  # subnet, cgroup root) only now
  if [[ -s $STATE/instance ]]; then instance_vars "$(<"$STATE/instance")"; fi
}

discovery_has_ephemeral() { "$K" get --raw /api/v1 | grep -F '"pods/ephemeralcontainers"' >/dev/null; }
readyz_ok() { [[ $("$K" get --raw /readyz) == ok ]]; }
node_ready() {
  [[ $("$K" get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
default_sa() { "$K" -n default get serviceaccount default >/dev/null; }
pids_snapshot() { cat "$PIDS"/*.pid 2>/dev/null | sort | tr '\n' ' '; }
eph_field() { # POD CONTAINER JSONPATH-SUFFIX
  "$K" get pod "$1" -o "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"$2\")]$3}"
}
eph_exit_is() { [[ $(eph_field "$1" "$2" .state.terminated.exitCode) == "$3" ]]; }
eph_running() { [[ -n $(eph_field "$1" "$2" .state.running.startedAt) ]]; }
eph_terminated() { [[ -n $(eph_field "$1" "$2" .state.terminated.finishedAt) ]]; }
pane() { tm capture-pane -p -J -S -200 -t "$1"; }
pane_has() { pane "$1" | grep -F -- "$2" >/dev/null; }

teardown_checks() {
  local rc t0
  t0=$(now_us)
  "$DOWN" >"$WORK/down.out" 2>&1
  rc=$?
  echo "  down.sh took $(secs "$t0")"
  check "down.sh exits 0" test "$rc" = 0
  ((rc == 0)) || cat "$WORK/down.out"
  poll 15 no_leftovers
  echo "  processes of this cluster (its state dir or its containerd's shims):"
  ours_running | sed 's/^/    /'
  check "no cluster process left (pgrep output above is empty)" no_leftovers
  check "bridge $BRIDGE is gone" bash -c "! ip link show $BRIDGE >/dev/null 2>&1"
  check "nothing mounted under $STATE" bash -c "! grep -qF ' $STATE' /proc/self/mountinfo"
  check "state dir $STATE removed" test ! -e "$STATE"
  check "cgroups /$CGROUP_ROOT removed" bash -c "! ls -d /sys/fs/cgroup/*/$CGROUP_ROOT >/dev/null 2>&1"
}

# ------------------------------------------------------------------------------
section "preparation"
"$DOWN" >/dev/null 2>&1 || { echo "down.sh failed before the test"; "$DOWN"; }
check "no cluster process before the test" no_leftovers

# ------------------------------------------------------------------------------
section "control-plane-only mode"
if up --control-plane-only; then
  pass "up.sh --control-plane-only (start time: $UP_TIME)"
  CP_TIME=$UP_TIME
  check "/readyz is ok" readyz_ok
  check "discovery /api/v1 lists pods/ephemeralcontainers" discovery_has_ephemeral
  check "ServiceAccount default/default exists" default_sa
  check "no kubelet or containerd in control-plane-only mode" \
    bash -c "[[ ! -e $PIDS/kubelet.pid && ! -e $PIDS/containerd.pid ]]"
  before=$(pids_snapshot)
  if up --control-plane-only; then
    pass "second up.sh --control-plane-only is a no-op ($UP_TIME)"
    check "second up.sh kept the same processes" test "$before" = "$(pids_snapshot)"
  else
    fail "second up.sh --control-plane-only"
  fi
else
  fail "up.sh --control-plane-only failed (took $UP_TIME)"
fi
section "control-plane-only teardown"
teardown_checks

# ------------------------------------------------------------------------------
section "full mode"
# Started the way a test harness starts it: with a large environment (which
# the daemons inherit, and which pid_of reads) and a descriptor of the
# caller's open (a lock, say), which no daemon may keep.
exec 7>"$WORK/caller.lock"
PADDING=$(head -c 65536 /dev/zero | tr '\0' x)
if ! EPHEMERA_ACCEPTANCE_PADDING=$PADDING up; then
  exec 7>&-
  fail "up.sh (full) failed (took $UP_TIME)"
  section "teardown"
  teardown_checks
  exit 1
fi
exec 7>&-
pass "up.sh (full) (start time: $UP_TIME)"
FULL_TIME=$UP_TIME
# the descriptors of every component, as "PID FD -> TARGET" lines
component_fds() {
  local c pid fd
  for c in "${ALL_COMPONENTS[@]}"; do
    pid=$(pid_of "$c") || continue
    for fd in /proc/"$pid"/fd/*; do echo "$pid ${fd##*/} -> $(readlink "$fd")"; done
  done
}
no_caller_descriptors() { [[ $(component_fds) != *"$WORK/caller.lock"* ]]; }
check "no component holds the caller's descriptors" no_caller_descriptors
every_component_found() {
  local c i
  for i in $(seq 50); do
    for c in "${ALL_COMPONENTS[@]}"; do pid_of "$c" >/dev/null || { echo "  pid_of $c failed on try $i"; return 1; }; done
  done
}
check "pid_of finds every component, 50 times over (environment of $((${#PADDING} / 1024)) KiB)" every_component_found
check "discovery /api/v1 lists pods/ephemeralcontainers" discovery_has_ephemeral
check "node $NODE_NAME is Ready" node_ready
check "ServiceAccount default/default exists" default_sa
check "kubectl binary is the multicall one ($K)" bash -c "[[ \$(readlink -f $K) == $CACHE_DIR/kcluster-* ]]"
check "server version is the pinned one" bash -c "$K version -o json | grep -q '\"gitVersion\": \"v1.34'"
before=$(pids_snapshot)
if up; then
  pass "second up.sh is a no-op ($UP_TIME)"
  check "second up.sh kept the same processes" test "$before" = "$(pids_snapshot)"
else
  fail "second up.sh (full)"
fi

section "users and RBAC"
check "admin context is current" test "$("$K" config current-context)" = admin
check "admin may patch pods/ephemeralcontainers" \
  bash -c "[[ \$($K auth can-i patch pods/ephemeralcontainers) == yes ]]"
check "alice authenticates as alice" bash -c "$K --context alice auth whoami -o jsonpath='{.status.userInfo.username}' | grep -qx alice"
check "alice may not patch pods/ephemeralcontainers" \
  bash -c "[[ \$($K --context alice auth can-i patch pods/ephemeralcontainers) == no ]]"
check "bob may not list pods (Forbidden)" \
  bash -c "out=\$($K --context bob get pods 2>&1); rc=\$?; [[ \$rc != 0 && \$out == *Forbidden* ]]"

section "pod with the local busybox image"
POD=acc-target
cat >"$WORK/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $POD
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["sleep", "3600"]
EOF
t0=$(now_us)
check "create pod $POD" bash -c "$K apply -f $WORK/pod.yaml >/dev/null"
if "$K" wait --for=condition=Ready "pod/$POD" --timeout=90s >/dev/null; then
  pass "pod $POD Running and Ready in $(secs "$t0")"
else
  fail "pod $POD did not become Ready"
  "$K" describe pod "$POD" | tail -n 15
fi
check "pod got an IP from the bridge subnet" \
  bash -c "$K get pod $POD -o jsonpath='{.status.podIP}' | grep -q '^${POD_SUBNET%%.0.0/*}\.'"
check "kubectl exec works" bash -c "$K exec $POD -c app -- echo exec-ok | grep -qx exec-ok"

section "kubectl debug, batch"
t0=$(now_us)
check "kubectl debug --target=app -c dbg -- sh -c 'ps; exit 3'" \
  bash -c "$K debug $POD --image=$BUSYBOX_IMAGE --image-pull-policy=Never --target=app -c dbg -- sh -c 'ps; exit 3' >$WORK/debug.out 2>&1"
if poll 60 eph_exit_is "$POD" dbg 3; then
  pass "ephemeral container dbg terminated with exit code 3 ($(secs "$t0"))"
else
  fail "ephemeral container dbg did not terminate with exit code 3 (state: $(eph_field "$POD" dbg .state))"
fi
"$K" logs "$POD" -c dbg >"$WORK/dbg.log" 2>&1
sed 's/^/    /' "$WORK/dbg.log"
check "logs of dbg show the target's 'sleep 3600' (shared process namespace)" grep -q 'sleep 3600' "$WORK/dbg.log"
timeout 30 "$K" attach "$POD" -c dbg >"$WORK/attach.out" 2>&1
rc=$?
echo "    kubectl attach rc=$rc: $(tail -n1 "$WORK/attach.out")"
check "kubectl attach to the terminated dbg fails (and does not hang)" test "$rc" -ne 0 -a "$rc" -ne 124

section "kubectl debug -it, interactive through tmux"
t0=$(now_us)
tm new-session -d -s dbg -x 160 -y 50 \
  "$K debug -it $POD --image=$BUSYBOX_IMAGE --image-pull-policy=Never --target=app -c dbg2 -- sh; echo KUBECTL_RC=\$?; sleep 600"
if poll 60 eph_running "$POD" dbg2; then
  pass "ephemeral container dbg2 Running ($(secs "$t0"))"
else
  fail "ephemeral container dbg2 never Running (state: $(eph_field "$POD" dbg2 .state))"
fi
check "kubectl attached (the prompt shows up)" poll 30 pane_has dbg 'If you don'"'"'t see a command prompt'
# shellcheck disable=SC2016 # expanded by the shell in the container
tm send-keys -t dbg 'echo marker-$((6*7)); ps' Enter
check "typed command runs inside the container" poll 20 pane_has dbg 'marker-42'
check "the interactive container sees the target's process" poll 10 pane_has dbg 'sleep 3600'
tm send-keys -t dbg 'exit' Enter
check "kubectl debug -it exits 0 after 'exit'" poll 30 pane_has dbg 'KUBECTL_RC=0'
if poll 30 eph_terminated "$POD" dbg2; then
  pass "dbg2 is terminated (exit code $(eph_field "$POD" dbg2 .state.terminated.exitCode))"
else
  fail "dbg2 did not terminate (state: $(eph_field "$POD" dbg2 .state))"
fi
echo "    --- tmux pane ---"
pane dbg | grep -v '^$' | sed 's/^/    | /'
tm new-session -d -s reattach -x 160 -y 20 "$K attach -it $POD -c dbg2; echo ATTACH_RC=\$?; sleep 600"
if poll 30 pane_has reattach 'ATTACH_RC='; then
  rc=$(pane reattach | sed -n 's/.*ATTACH_RC=\([0-9]*\).*/\1/p' | tail -n1)
  echo "    kubectl attach -it rc=$rc: $(pane reattach | grep -v '^$' | grep -v ATTACH_RC | tail -n1)"
  check "attaching again to dbg2 (with a TTY) fails" test "$rc" != 0
else
  fail "kubectl attach -it to the terminated dbg2 hangs"
fi
check "ephemeral containers of $POD are dbg and dbg2" \
  bash -c "[[ \$($K get pod $POD -o jsonpath='{.spec.ephemeralContainers[*].name}') == 'dbg dbg2' ]]"
tm kill-server >/dev/null 2>&1 # its command lines name the cluster dir

section "custom image through mkimage.py and import-image.sh"
python3 "$CLUSTER_SRC/hack/mkimage.py" --tag localhost/acc-hello:1 --out "$WORK/hello.tar" \
  --file /bin/busybox:/bin/busybox --entrypoint '["/bin/busybox", "echo"]' --cmd 'hello-from-image' --user 65534 2>/dev/null
python3 "$CLUSTER_SRC/hack/mkimage.py" --tag localhost/acc-hello:1 --out "$WORK/hello2.tar" \
  --file /bin/busybox:/bin/busybox --entrypoint '["/bin/busybox", "echo"]' --cmd 'hello-from-image' --user 65534 2>/dev/null
check "mkimage.py output is deterministic" cmp -s "$WORK/hello.tar" "$WORK/hello2.tar"
check "import-image.sh imports it" "$CLUSTER_SRC/import-image.sh" "$WORK/hello.tar"
check "import-image.sh again is harmless" "$CLUSTER_SRC/import-image.sh" "$WORK/hello.tar"
cat >"$WORK/hello.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: acc-hello
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true}
  containers:
  - name: hello
    image: localhost/acc-hello:1
    imagePullPolicy: Never
EOF
"$K" apply -f "$WORK/hello.yaml" >/dev/null
check "pod from the imported image runs as non-root and succeeds" \
  poll 60 bash -c "[[ \$($K get pod acc-hello -o jsonpath='{.status.phase}') == Succeeded ]]"
check "its log says hello-from-image" bash -c "$K logs acc-hello | grep -qx hello-from-image"

section "full teardown"
"$K" get pods -o wide 2>/dev/null | sed 's/^/    /'
teardown_checks
check "down.sh with nothing running exits 0" "$DOWN"

section "timings"
echo "  control-plane-only start: ${CP_TIME:-n/a}"
echo "  full start:               ${FULL_TIME:-n/a}"
