#!/usr/bin/env bash
# Imports image tarballs into the running test cluster's containerd (namespace
# k8s.io, where the kubelet looks), without any registry.
#
#   tests/cluster/import-image.sh IMAGE.tar [IMAGE.tar...]
#
# Accepts what `ctr images import` accepts: docker-archive tarballs (from
# hack/mkimage.py, `docker save`, `podman save --format docker-archive`) and
# OCI image-layout tarballs. Use fully qualified tags (localhost/NAME:TAG) and
# `imagePullPolicy: Never` (or IfNotPresent) in pods. Importing the same
# tarball again is a no-op; importing a new one under an existing tag moves
# the tag (running containers keep the old image).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($#)) || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $(id -u) == 0 ]] || die "import-image.sh must run as root"
pid_of containerd >/dev/null ||
  die "the test cluster's containerd is not running in $STATE (start a full cluster with $CLUSTER_SRC/up.sh)"
snapshotter=$(cat "$STATE/snapshotter" 2>/dev/null || echo overlayfs)
for t in "$@"; do
  [[ -f $t ]] || die "no such file: $t"
  log "importing $t"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --snapshotter "$snapshotter" "$t" >&2 ||
    die "ctr images import $t failed"
done
