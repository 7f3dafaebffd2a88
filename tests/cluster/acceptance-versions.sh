#!/usr/bin/env bash
# Acceptance test of the old-version clusters (up.sh --kubernetes 1.21|1.22|1.24):
# for each version, in its own state dir and instance, next to whatever else
# runs (the default cluster is never touched):
#
#   - control plane with the version's default gates, with EphemeralContainers
#     on and off: /version, pods/ephemeralcontainers in /api/v1 discovery, and
#     the subresource in the version's shape (1.21: GET/PUT of kind
#     EphemeralContainers, a second PUT keeping the first, a stale PUT's 409;
#     1.22+: strategic merge and JSON patches of a Pod), the other shape's
#     answer, and every answer when the gate is off; a pod set Running through
#     the status subresource (a stand-in kubelet)
#   - a full cluster with the version's own kubelet and scheduler, gates on: an
#     ephemeral container runs, exits 3 and sees the target's processes
#   - the apiserver's gate on and the kubelet's off: the container is accepted
#     into the spec and never started
#   - two full clusters of different versions at once; stopping one leaves the
#     other working
#
#   tests/cluster/acceptance-versions.sh [--control-plane-only] [--results DIR] [MINOR...]
#
# MINOR defaults to every version under k8s/. The HTTP answers are printed
# (and kept in DIR with --results). State dirs: ${EPHEMERA_VERSIONS_DIR:-/tmp}/ephemera-kMMM
# (e.g. /tmp/ephemera-k121). Exits non-zero if any check failed; the last line
# is "N passed, M failed".
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) == 0 ]] || die "acceptance-versions.sh must run as root"
FULL=true
RESULTS=""
VERSIONS=()
while (($#)); do
  case $1 in
    --control-plane-only) FULL=false ;;
    --results) RESULTS=$2; shift ;;
    -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) VERSIONS+=("${1#v}") ;;
  esac
  shift
done
((${#VERSIONS[@]})) || mapfile -t VERSIONS < <(old_minors)
for v in "${VERSIONS[@]}"; do
  [[ -f $CLUSTER_SRC/k8s/v$v/go.mod ]] || die "no module for Kubernetes $v under $CLUSTER_SRC/k8s"
done
BASE=${EPHEMERA_VERSIONS_DIR:-/tmp}
WORK=$(mktemp -d /tmp/ephemera-accv.XXXXXX)
[[ -z $RESULTS ]] || mkdir -p "$RESULTS"
PASS=0
FAIL=0
T_ALL=${EPOCHREALTIME/./}
TIMINGS=()

pass() { PASS=$((PASS + 1)); printf '  PASS  %s\n' "$*"; }
fail() { FAIL=$((FAIL + 1)); printf '  FAIL  %s\n' "$*"; }
check() { # DESCRIPTION CMD...
  local d=$1; shift
  if "$@"; then pass "$d"; else fail "$d"; fi
}
note() { printf '%s\n' "$@" | sed 's/^/        /'; }
silently() { "$@" >/dev/null 2>&1; }
section() { printf '\n== %s\n' "$*"; }
now_us() { echo "${EPOCHREALTIME/./}"; }
secs() { local us=$(($(now_us) - $1)); printf '%d.%ds' $((us / 1000000)) $((us % 1000000 / 100000)); }
poll() { # TIMEOUT_S CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# ------------------------------------------------------------ the clusters ---
dir_of() { echo "$BASE/ephemera-k${1//./}"; } # MINOR
ALL_DIRS=()
for v in "${VERSIONS[@]}"; do ALL_DIRS+=("$(dir_of "$v")"); done

finish() {
  trap - EXIT
  local d
  for d in "${ALL_DIRS[@]}"; do EPHEMERA_CLUSTER_DIR=$d "$CLUSTER_SRC/down.sh" >/dev/null 2>&1; done
  rm -rf "$WORK"
  section "timings"
  printf '  %s\n' "${TIMINGS[@]}"
  printf '\nacceptance-versions total time: %s\n' "$(secs "$T_ALL")"
  echo "$PASS passed, $FAIL failed"
  exit $((FAIL > 0 ? 1 : 0))
}
trap finish EXIT
trap 'fail "interrupted"; exit 1' INT TERM

# use DIR: point the helpers at the cluster in DIR
use() {
  C=$1
  K=(env "KUBECONFIG=$C/kubeconfig" "$C/bin/kubectl" --context admin)
  SERVER=$(awk '/server:/ {print $2; exit}' "$C/kubeconfig" 2>/dev/null)
}

# up MINOR DESCRIPTION UP_ARGS...: start (or restart) that version's cluster
up() {
  local v=$1 desc=$2 t0 rc; shift 2
  use "$(dir_of "$v")"
  t0=$(now_us)
  EPHEMERA_CLUSTER_DIR=$C "$CLUSTER_SRC/up.sh" --kubernetes "$v" "$@" >"$WORK/up.out" 2>"$WORK/up.err"
  rc=$?
  use "$C"
  TIMINGS+=("$v $desc: $(secs "$t0")")
  if ((rc != 0)); then
    fail "up.sh --kubernetes $v $* (rc $rc)"
    tail -n 40 "$WORK/up.err" | sed 's/^/    /'
    return 1
  fi
  pass "up.sh --kubernetes $v $* ($(secs "$t0"), $(sed -n 's/.* as \(instance [0-9]*\) (API server port \([0-9]*\)).*/\1, port \2/p' "$WORK/up.err"))"
}

down() { # MINOR
  local d rc t0
  d=$(dir_of "$1")
  t0=$(now_us)
  EPHEMERA_CLUSTER_DIR=$d "$CLUSTER_SRC/down.sh" >"$WORK/down.out" 2>&1
  rc=$?
  check "down.sh of $d exits 0 ($(secs "$t0"))" test "$rc" = 0
  ((rc == 0)) || sed 's/^/    /' "$WORK/down.out"
  check "state dir $d removed" test ! -e "$d"
  check "no process names $d" poll 15 bash -c "! pgrep -f -- '$d(/| |\$)' >/dev/null"
}

# api METHOD PATH [BODY_FILE [CONTENT_TYPE]]: as admin; the answer goes to
# $WORK/resp.json, the status to CODE
api() {
  local method=$1 path=$2 data=${3:-} ctype=${4:-application/json}
  local args=(-sS --max-time 20 --cacert "$C/pki/ca.crt" -H "Authorization: Bearer $(<"$C/tokens/admin")"
    -X "$method" -o "$WORK/resp.json" -w '%{http_code}')
  [[ -z $data ]] || args+=(-H "Content-Type: $ctype" --data-binary "@$data")
  CODE=$(curl "${args[@]}" "$SERVER$path") || CODE=000
}
# jq-like: jget EXPR [FILE] with EXPR a Python expression on `o`
jget() { python3 -c "import json,sys; o=json.load(open(sys.argv[1])); print($1)" "${2:-$WORK/resp.json}" 2>/dev/null; }
# show NAME: print the answer compactly and keep it with --results
show() {
  note "-> HTTP $CODE $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",", ":"))[:400])' "$WORK/resp.json" 2>/dev/null || head -c 400 "$WORK/resp.json")"
  [[ -z $RESULTS ]] || cp "$WORK/resp.json" "$RESULTS/$VER-$1.json"
  [[ -z $RESULTS ]] || echo "$CODE" >"$RESULTS/$VER-$1.code"
}

SUB=/api/v1/namespaces/default/pods/web/ephemeralcontainers

discovery_entry() { # prints "kind verbs" of pods/ephemeralcontainers, fails if absent
  "${K[@]}" get --raw /api/v1 | python3 -c '
import json, sys
for r in json.load(sys.stdin)["resources"]:
    if r["name"] == "pods/ephemeralcontainers":
        print(r.get("kind", ""), ",".join(r["verbs"])); break
else:
    sys.exit(1)'
}

make_pod() { # NAME: a busybox pod `app` running sleep 3600, in namespace default
  cat >"$WORK/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["sleep", "3600"]
EOF
  "${K[@]}" apply -f "$WORK/pod.yaml" >/dev/null
}

# container NAME [COMMAND_JSON]: an ephemeral container as JSON
container() {
  printf '{"name":"%s","image":"%s","imagePullPolicy":"Never","command":%s,"targetContainerName":"app","terminationMessagePolicy":"File"}' \
    "$1" "$BUSYBOX_IMAGE" "${2:-[\"sh\"]}"
}

# legacy_body FILE RV NAME...: the pre-1.22 body with these containers
legacy_body() {
  local f=$1 rv=$2 n list=""; shift 2
  for n in "$@"; do list+=${list:+,}$(container "$n"); done
  printf '{"apiVersion":"v1","kind":"EphemeralContainers","metadata":{"name":"web"%s},"ephemeralContainers":[%s]}' \
    "${rv:+,\"resourceVersion\":\"$rv\"}" "$list" >"$f"
}

eph_names() { "${K[@]}" get pod "${1:-web}" -o 'jsonpath={.spec.ephemeralContainers[*].name}'; }
eph_field() { "${K[@]}" get pod "$1" -o "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"$2\")]$3}"; }

legacy() { [[ ${1#1.} -lt 22 ]]; } # MINOR: the subresource takes kind EphemeralContainers

# add_container MINOR POD NAME COMMAND_JSON: adds one ephemeral container in
# the version's shape (GET+PUT before 1.22, a JSON patch from 1.22)
add_container() {
  local v=$1 pod=$2 name=$3 cmd=$4 path=/api/v1/namespaces/default/pods/$2/ephemeralcontainers
  if legacy "$v"; then
    api GET "$path"
    python3 - "$WORK/resp.json" "$(container "$name" "$cmd")" >"$WORK/add.json" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
o["ephemeralContainers"].append(json.loads(sys.argv[2]))
print(json.dumps(o))
EOF
    api PUT "$path" "$WORK/add.json"
  else
    if [[ -n $(eph_names "$pod") ]]; then
      printf '[{"op":"add","path":"/spec/ephemeralContainers/-","value":%s}]' "$(container "$name" "$cmd")"
    else
      printf '[{"op":"add","path":"/spec/ephemeralContainers","value":[%s]}]' "$(container "$name" "$cmd")"
    fi >"$WORK/add.json"
    api PATCH "$path" "$WORK/add.json" application/json-patch+json
  fi
  [[ $CODE == 200 ]]
}

# ----------------------------------------------------------- control plane ---
control_plane_gate_on() {
  local v=$VER want rv kind verbs
  want=$(k8s_version_in "$CLUSTER_SRC/k8s/v$v")
  section "Kubernetes $v: control plane, --feature-gates EphemeralContainers=true"
  up "$v" "control plane, gate on" --control-plane-only --feature-gates EphemeralContainers=true || return
  api GET /version
  check "/version says $want" test "$(jget 'o["gitVersion"]')" = "$want"
  if read -r kind verbs < <(discovery_entry); then
    pass "/api/v1 lists pods/ephemeralcontainers (kind $kind, verbs $verbs)"
    if legacy "$v"; then
      check "its kind is EphemeralContainers" test "$kind" = EphemeralContainers
    else
      check "its kind is Pod" test "$kind" = Pod
    fi
  else
    fail "/api/v1 lists pods/ephemeralcontainers"
  fi
  make_pod web
  check "pod web created (Pending: no kubelet)" test "$("${K[@]}" get pod web -o 'jsonpath={.status.phase}')" = Pending
  if legacy "$v"; then
    api GET "$SUB"
    check "GET subresource: 200, kind EphemeralContainers, no containers" \
      test "$CODE $(jget 'o["kind"], len(o["ephemeralContainers"])')" = "200 EphemeralContainers 0"
    show get-empty
    legacy_body "$WORK/b1.json" "" debugger-old
    api PUT "$SUB" "$WORK/b1.json"
    check "PUT kind EphemeralContainers with one container: 200" test "$CODE" = 200
    show put-first
    api GET "$SUB"
    rv=$(jget 'o["metadata"]["resourceVersion"]')
    legacy_body "$WORK/b2.json" "$rv" debugger-old debugger-new
    api PUT "$SUB" "$WORK/b2.json"
    check "PUT keeping the first and adding a second (resourceVersion $rv): 200" test "$CODE" = 200
    check "the pod's spec has both, in order" test "$(eph_names)" = "debugger-old debugger-new"
    legacy_body "$WORK/b3.json" "$rv" debugger-old debugger-new debugger-late
    api PUT "$SUB" "$WORK/b3.json"
    check "PUT at the stale resourceVersion $rv: 409 Conflict" test "$CODE $(jget 'o["reason"]')" = "409 Conflict"
    show put-stale
    legacy_body "$WORK/b4.json" "" debugger-new
    api PUT "$SUB" "$WORK/b4.json"
    check "PUT that drops an earlier container: refused (422)" test "$CODE" = 422
    show put-drop
    # what a 1.22+ client meets here
    printf '{"spec":{"ephemeralContainers":[%s]}}' "$(container debugger-smp)" >"$WORK/smp.json"
    api PATCH "$SUB" "$WORK/smp.json" application/strategic-merge-patch+json
    note "strategic merge patch of a Pod (what kubectl >= 1.22 sends):"
    show smp-on-legacy
    printf '[{"op":"add","path":"/spec/ephemeralContainers/-","value":%s}]' "$(container debugger-jp)" >"$WORK/jp.json"
    api PATCH "$SUB" "$WORK/jp.json" application/json-patch+json
    note "JSON patch add /spec/ephemeralContainers/- (what ephemera sends from 1.22):"
    show jsonpatch-on-legacy
    check "patches in the Pod shape changed nothing" test "$(eph_names)" = "debugger-old debugger-new"
  else
    api GET "$SUB"
    check "GET subresource: 200, kind Pod" test "$CODE $(jget 'o["kind"]')" = "200 Pod"
    printf '{"spec":{"ephemeralContainers":[%s]}}' "$(container debugger-old)" >"$WORK/smp.json"
    api PATCH "$SUB" "$WORK/smp.json" application/strategic-merge-patch+json
    check "strategic merge patch adding one: 200" test "$CODE" = 200
    show smp-first
    rv=$(jget 'o["metadata"]["resourceVersion"]')
    printf '[{"op":"replace","path":"/metadata/resourceVersion","value":"%s"},{"op":"add","path":"/spec/ephemeralContainers/-","value":%s}]' \
      "$rv" "$(container debugger-new)" >"$WORK/jp.json"
    api PATCH "$SUB" "$WORK/jp.json" application/json-patch+json
    check "JSON patch appending a second at resourceVersion $rv: 200" test "$CODE" = 200
    check "the pod's spec has both, in order" test "$(eph_names)" = "debugger-old debugger-new"
    sed -i 's/debugger-new/debugger-late/' "$WORK/jp.json"
    api PATCH "$SUB" "$WORK/jp.json" application/json-patch+json
    check "the same JSON patch at the stale resourceVersion $rv: 409 Conflict" test "$CODE $(jget 'o["reason"]')" = "409 Conflict"
    show jsonpatch-stale
    # what a pre-1.22 client meets here
    legacy_body "$WORK/b1.json" "" debugger-old debugger-new debugger-legacy
    api PUT "$SUB" "$WORK/b1.json"
    note "PUT of kind EphemeralContainers (what kubectl and clients of 1.16-1.21 send):"
    show put-legacy-on-pod-shape
    check "the legacy PUT is refused" test "$CODE" != 200
  fi
  # a stand-in kubelet: the pod is Running as far as the API is concerned
  "${K[@]}" patch pod web --subresource=status --type=merge \
    -p '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}' >/dev/null 2>"$WORK/err"
  check "status subresource sets the pod Running (a stand-in kubelet)" \
    test "$("${K[@]}" get pod web -o 'jsonpath={.status.phase}')" = Running
  check "an ephemeral container can be added to the Running pod" add_container "$v" web debugger-running '["sh"]'
  check "no kubelet, so no ephemeralContainerStatuses" test -z "$("${K[@]}" get pod web -o 'jsonpath={.status.ephemeralContainerStatuses}')"
}

control_plane_default_gates() {
  local v=$VER kind verbs
  section "Kubernetes $v: control plane, default feature gates"
  up "$v" "control plane, default gates" --control-plane-only || return
  if read -r kind verbs < <(discovery_entry); then
    note "/api/v1 lists pods/ephemeralcontainers (kind $kind, verbs $verbs)"
    check "served by default in $v (beta from 1.23)" test "${v#1.}" -ge 23
  else
    note "/api/v1 does not list pods/ephemeralcontainers"
    check "not served by default in $v (alpha before 1.23)" test "${v#1.}" -lt 23
  fi
}

control_plane_gate_off() {
  local v=$VER
  section "Kubernetes $v: control plane, --feature-gates EphemeralContainers=false"
  up "$v" "control plane, gate off" --control-plane-only --feature-gates EphemeralContainers=false || return
  if discovery_entry >/dev/null; then
    fail "/api/v1 does not list pods/ephemeralcontainers (it does)"
  else
    pass "/api/v1 does not list pods/ephemeralcontainers"
  fi
  make_pod web
  api GET "$SUB"
  note "GET the subresource:"
  show gate-off-get
  legacy_body "$WORK/b1.json" "" debugger-old
  api PUT "$SUB" "$WORK/b1.json"
  note "PUT of kind EphemeralContainers:"
  show gate-off-put-legacy
  printf '{"spec":{"ephemeralContainers":[%s]}}' "$(container debugger-old)" >"$WORK/smp.json"
  api PATCH "$SUB" "$WORK/smp.json" application/strategic-merge-patch+json
  note "strategic merge patch of a Pod:"
  show gate-off-smp
  printf '[{"op":"add","path":"/spec/ephemeralContainers","value":[%s]}]' "$(container debugger-old)" >"$WORK/jp.json"
  api PATCH "$SUB" "$WORK/jp.json" application/json-patch+json
  note "JSON patch add /spec/ephemeralContainers:"
  show gate-off-jsonpatch
  check "no write went through" test -z "$(eph_names)"
  "${K[@]}" debug web --image="$BUSYBOX_IMAGE" --image-pull-policy=Never -c dbg -- true >"$WORK/debug.out" 2>&1
  note "kubectl $MAIN_MINOR debug says (rc $?): $(grep -v 'profile=legacy' "$WORK/debug.out" | tr '\n' ' ')"
  [[ -z $RESULTS ]] || cp "$WORK/debug.out" "$RESULTS/$VER-gate-off-kubectl-debug.txt"
}

# -------------------------------------------------------------------- node ---
full_gates_on() {
  local v=$VER want t0
  want=$(k8s_version_in "$CLUSTER_SRC/k8s/v$v")
  section "Kubernetes $v: full cluster (its own scheduler and kubelet), gates on"
  up "$v" "full, gates on" --feature-gates EphemeralContainers=true || return
  check "node 127.0.0.1 Ready with kubelet $want" \
    test "$("${K[@]}" get node 127.0.0.1 -o 'jsonpath={.status.nodeInfo.kubeletVersion}')" = "$want"
  make_pod web
  t0=$(now_us)
  if "${K[@]}" wait --for=condition=Ready pod/web --timeout=90s >/dev/null; then
    pass "pod web Running and Ready ($(secs "$t0"))"
  else
    fail "pod web Running and Ready"
    "${K[@]}" describe pod web | tail -n 15 | sed 's/^/    /'
    return
  fi
  t0=$(now_us)
  check "ephemeral container dbg added in the $v shape" add_container "$v" web dbg '["sh","-c","ps; exit 3"]'
  if poll 60 bash -c "[[ \$(env KUBECONFIG=$C/kubeconfig $C/bin/kubectl get pod web -o 'jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"dbg\")].state.terminated.exitCode}') == 3 ]]"; then
    pass "dbg ran and terminated with exit code 3 ($(secs "$t0"))"
  else
    fail "dbg terminated with exit code 3 (status: $(eph_field web dbg ''))"
  fi
  check "its log shows the target's 'sleep 3600' (shared process namespace)" \
    bash -c "env KUBECONFIG=$C/kubeconfig $C/bin/kubectl logs web -c dbg | grep -q 'sleep 3600'"
  check "kubectl exec works" bash -c "env KUBECONFIG=$C/kubeconfig $C/bin/kubectl exec web -c app -- echo ok | grep -qx ok"
}

full_kubelet_gate_off() {
  local v=$VER
  section "Kubernetes $v: apiserver gate on, kubelet gate off"
  up "$v" "full, kubelet gate off" --feature-gates EphemeralContainers=true --kubelet-feature-gates EphemeralContainers=false || return
  make_pod web
  "${K[@]}" wait --for=condition=Ready pod/web --timeout=90s >/dev/null || { fail "pod web Ready"; return; }
  check "ephemeral container dbg accepted by the apiserver" add_container "$v" web dbg '["sh","-c","sleep 5"]'
  check "dbg is in the pod's spec" test "$(eph_names)" = dbg
  sleep 20
  check "after 20 s the kubelet has not started it: no ephemeralContainerStatuses" \
    test -z "$("${K[@]}" get pod web -o 'jsonpath={.status.ephemeralContainerStatuses}')"
  note "pod status: phase $("${K[@]}" get pod web -o 'jsonpath={.status.phase}'), containers $("${K[@]}" get pod web -o 'jsonpath={.status.containerStatuses[*].name}')"
  note "kubelet log lines that name dbg: $(grep -c '\bdbg\b' "$C/logs/kubelet.log")"
  grep '\bdbg\b' "$C/logs/kubelet.log" | head -n 3 | cut -c1-300 | sed 's/^/          /'
}

# ------------------------------------------------------------------ main ---
# others_snapshot: claims and PIDs of the other clusters (the default one
# included), which must come through untouched
others_snapshot() {
  local f
  for f in "$REGISTRY"/instance-* "$DEFAULT_STATE"/pids/*.pid; do [[ -f $f ]] && echo "$f $(cat "$f")"; done
  return 0
}

section "preparation"
for d in "${ALL_DIRS[@]}"; do
  [[ -e $d ]] && EPHEMERA_CLUSTER_DIR=$d "$CLUSTER_SRC/down.sh" >/dev/null 2>&1
done
others_before=$(others_snapshot)
EPHEMERA_CLUSTER_DIR=$(dir_of "${VERSIONS[0]}") "$CLUSTER_SRC/up.sh" --deps-only >/dev/null 2>&1 || true
for v in "${VERSIONS[@]}"; do
  t0=$(now_us)
  EPHEMERA_CLUSTER_DIR=$(dir_of "$v") "$CLUSTER_SRC/up.sh" --deps-only --kubernetes "$v" >"$WORK/deps.out" 2>&1
  check "binaries of Kubernetes $v ready ($(secs "$t0"))" test $? = 0
  TIMINGS+=("$v binaries ready (build or cache): $(secs "$t0")")
done

for VER in "${VERSIONS[@]}"; do
  control_plane_default_gates
  control_plane_gate_on
  control_plane_gate_off
  if $FULL; then
    full_gates_on
    full_kubelet_gate_off
  fi
  section "Kubernetes $VER: teardown"
  down "$VER"
done

if $FULL && ((${#VERSIONS[@]} >= 2)); then
  A=${VERSIONS[0]} B=${VERSIONS[1]}
  section "two full clusters at once: $A and $B"
  if up "$A" "full, next to $B" --feature-gates EphemeralContainers=true && up "$B" "full, next to $A" --feature-gates EphemeralContainers=true; then
    for v in "$A" "$B"; do
      use "$(dir_of "$v")"
      make_pod web
      check "$v: pod web Ready next to the other cluster" silently "${K[@]}" wait --for=condition=Ready pod/web --timeout=90s
      note "$v: instance $(<"$C/instance"), pod IP $("${K[@]}" get pod web -o 'jsonpath={.status.podIP}')"
    done
    down "$B"
    use "$(dir_of "$A")"
    check "$A: node still Ready after $B went down" \
      bash -c "[[ \$(env KUBECONFIG=$C/kubeconfig $C/bin/kubectl get node 127.0.0.1 -o 'jsonpath={.status.conditions[?(@.type==\"Ready\")].status}') == True ]]"
    check "$A: kubectl exec into its pod still works" \
      bash -c "env KUBECONFIG=$C/kubeconfig $C/bin/kubectl exec web -c app -- echo ok | grep -qx ok"
    check "$A: an ephemeral container still runs" add_container "$A" web dbg '["sh","-c","exit 7"]'
    check "$A: it terminated with exit code 7" poll 60 bash -c \
      "[[ \$(env KUBECONFIG=$C/kubeconfig $C/bin/kubectl get pod web -o 'jsonpath={.status.ephemeralContainerStatuses[0].state.terminated.exitCode}') == 7 ]]"
  fi
  down "$A"
fi

section "other clusters"
others_after=$(others_snapshot)
note "before:" "${others_before:-(none)}" "after:" "${others_after:-(none)}"
# Clusters started meanwhile (CI runs the e2e lane next to this one) are not ours to judge;
# every claim and PID that existed before must still be there, unchanged.
others_lost=$(comm -23 <(sort <<<"$others_before") <(sort <<<"$others_after") | sed '/^$/d')
note "lost or changed:" "${others_lost:-(none)}"
check "other clusters' claims and PIDs are unchanged" test -z "$others_lost"
