#!/usr/bin/env bash
# `make demo`: the local cluster, the CRD, the operator, a tomcat-test pod and a
# DebugSession for it, shown as it moves to Running.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../tests/cluster/lib.sh
source tests/cluster/lib.sh # STATE, spawn_daemon
export KUBECONFIG=$STATE/kubeconfig
kubectl=("$STATE/bin/kubectl")
operator=target/debug/ephemera
[ -x "$operator" ] || cargo build --locked
[ -f "$KUBECONFIG" ] || tests/cluster/up.sh

echo "==> installing the DebugSession CRD"
"${kubectl[@]}" apply --server-side --force-conflicts -f crds/debugsession.yaml
"${kubectl[@]}" wait --for=condition=Established --timeout=30s crd/debugsessions.ephemera.dev

echo "==> (re)starting the operator; log in $STATE/logs/ephemera.log"
if [ -f "$STATE/pids/ephemera.pid" ]; then
  kill "$(cat "$STATE/pids/ephemera.pid")" 2>/dev/null || true
fi
mkdir -p "$STATE/pids" "$STATE/logs"
# The demo installs no admission policy that records who asked, so the
# operator is told to trust every DebugSession author (see docs/security.md).
spawn_daemon "$STATE/logs/ephemera.log" "$operator" run --metrics-addr 127.0.0.1:9464 --require-requester=false
echo "$SPAWNED_PID" >"$STATE/pids/ephemera.pid"

echo "==> creating pod tomcat-test (container tomcat-java)"
"${kubectl[@]}" delete debugsession tomcat-debug --ignore-not-found --wait=true >/dev/null
"${kubectl[@]}" delete pod tomcat-test --ignore-not-found --wait=true >/dev/null
"${kubectl[@]}" apply -f examples/tomcat-test-pod.yaml
"${kubectl[@]}" wait --for=condition=Ready --timeout=120s pod/tomcat-test

echo "==> applying examples/tomcat-debug.yaml"
"${kubectl[@]}" apply -f examples/tomcat-debug.yaml
for _ in $(seq 1 120); do
  "${kubectl[@]}" get dbgs tomcat-debug -o wide --no-headers 2>/dev/null | sed 's/^/    /'
  phase=$("${kubectl[@]}" get dbgs tomcat-debug -o jsonpath='{.status.phase}' 2>/dev/null || true)
  case "$phase" in
    Running) break ;;
    Failed) "${kubectl[@]}" describe dbgs tomcat-debug; exit 1 ;;
  esac
  sleep 1
done
[ "$phase" = Running ] || { echo "tomcat-debug did not reach Running" >&2; tail -n 30 "$STATE/logs/ephemera.log" >&2; exit 1; }
echo
"${kubectl[@]}" get dbgs -o wide
echo
echo "Attach with:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "  $("${kubectl[@]}" get dbgs tomcat-debug -o jsonpath='{.status.attachCommand}')"
echo "(kubectl is $STATE/bin/kubectl.) Stop with: make demo-stop"
