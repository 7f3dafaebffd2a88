#!/usr/bin/env bash
# kill-trace.sh start|stop: records every SIGKILL on the machine, with its sender, in a
# tracefs instance of our own, while the fault suite runs. When a debug container that
# should run is found killed, the census (tests/faults/support.rs) names who sent it.
# Without tracefs (not root, or no kernel support) it says so and does nothing.
set -euo pipefail
TRACEFS=/sys/kernel/tracing
INSTANCE=$TRACEFS/instances/ephemera-faults

case ${1:-} in
start)
  if [[ ! -d $TRACEFS/instances ]]; then
    mount -t tracefs nodev "$TRACEFS" 2>/dev/null || true
  fi
  if [[ ! -d $TRACEFS/instances ]]; then
    echo "kill-trace: no tracefs at $TRACEFS; killed containers will go unexplained" >&2
    exit 0
  fi
  if ! { [[ -d $INSTANCE ]] || mkdir "$INSTANCE" 2>/dev/null; }; then
    echo "kill-trace: cannot make $INSTANCE (not root?); killed containers will go unexplained" >&2
    exit 0
  fi
  echo 0 >"$INSTANCE/tracing_on"
  # boot time, so that the census can turn a timestamp into the wall clock
  echo boot >"$INSTANCE/trace_clock"
  echo 2048 >"$INSTANCE/buffer_size_kb"
  echo 'sig == 9' >"$INSTANCE/events/signal/signal_generate/filter"
  echo 1 >"$INSTANCE/events/signal/signal_generate/enable"
  echo >"$INSTANCE/trace"
  echo 1 >"$INSTANCE/tracing_on"
  ;;
stop)
  [[ -d $INSTANCE ]] || exit 0
  echo 0 >"$INSTANCE/tracing_on"
  rmdir "$INSTANCE"
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
