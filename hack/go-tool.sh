#!/usr/bin/env bash
# Prints the path of a Go test tool built from DIR (a Go module of this repo),
# building it first if needed. The binary is cached by a hash of the module's
# files, like the cluster harness's binary, so a warm run costs nothing.
#
#   hack/go-tool.sh tests/gitops session-health
set -euo pipefail
dir=$1 name=$2
cd "$(dirname "$0")/.."
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ephemera
hash=$(cd "$dir" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum | sha256sum | cut -c1-12)
binary=$cache/$name-$hash
if [[ ! -x $binary ]]; then
  mkdir -p "$cache"
  exec 9>"$cache/$name.lock"
  flock 9
  if [[ ! -x $binary ]]; then
    echo "building $binary (log: $cache/$name.log)" >&2
    go build -C "$dir" -o "$binary.tmp.$$" . >"$cache/$name.log" 2>&1 || { tail -n 30 "$cache/$name.log" >&2; exit 1; }
    mv -f "$binary.tmp.$$" "$binary"
  fi
fi
echo "$binary"
