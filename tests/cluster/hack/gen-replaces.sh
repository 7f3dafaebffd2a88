#!/usr/bin/env bash
# Regenerates the staging-module replace block of a go.mod that requires
# k8s.io/kubernetes (tests/cluster/go.mod, or the one in the directory given,
# e.g. tests/cluster/k8s/v1.21) from the go.mod of the pinned k8s.io/kubernetes,
# which replaces its staging modules with local paths that do not exist
# outside its repository.
#
#   hack/gen-replaces.sh [MODULE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then cd "$1"; fi
k8s_version=$(go mod edit -json | python3 -c "import json,sys; print(next(r[\"Version\"] for r in json.load(sys.stdin)[\"Require\"] if r[\"Path\"]==\"k8s.io/kubernetes\"))")
[ -n "$k8s_version" ] || { echo "k8s.io/kubernetes is not required in go.mod" >&2; exit 1; }
staging_version="v0.${k8s_version#v1.}"
k8s_gomod=$(go mod download -json "k8s.io/kubernetes@${k8s_version}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
modules=$(sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$k8s_gomod" | sort -u)
go mod edit $(for m in $modules; do printf -- '-replace=%s=%s@%s ' "$m" "$m" "$staging_version"; done)
echo "replaced $(echo "$modules" | wc -l) staging modules with ${staging_version}" >&2
