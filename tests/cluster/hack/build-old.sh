#!/usr/bin/env bash
# Builds the multicall binary of an old Kubernetes from its module directory
# (tests/cluster/k8s/v1.21, ...) into OUT. up.sh calls it under its build lock
# and caches the result by a hash of the inputs; it can also be run by hand.
#
#   hack/build-old.sh MODULE_DIR OUT
#
# Everything it writes outside OUT stays in
# ${XDG_CACHE_HOME:-~/.cache}/ephemera/src/kubernetes-vX.Y.Z (a writable copy of
# the module, the generated code, the go.mod the build uses); the repository
# holds only go.mod, go.sum and the *.go files of MODULE_DIR.
#
# Why the copy: Kubernetes before 1.24 does not ship pkg/generated/openapi in
# its module zip (its Makefile generates it at build time), and the module
# cache is read-only. So the module is copied, the file is generated into the
# copy with the openapi-gen of the kube-openapi that this version pins, over
# the same package list as upstream's build/root/Makefile.generated_files, and
# a copy of MODULE_DIR/go.mod replaces k8s.io/kubernetes with that copy.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

(($# == 2)) || die "usage: build-old.sh MODULE_DIR OUT"
MOD_DIR=$(cd "$1" && pwd)
OUT=$2
[[ $OUT == /* ]] || OUT=$PWD/$OUT
VERSION=$(k8s_version_in "$MOD_DIR")
[[ -n $VERSION ]] || die "$MOD_DIR/go.mod does not require k8s.io/kubernetes"
WORK=$CACHE_DIR/src/kubernetes-$VERSION
T0=$SECONDS

step() { log "[$VERSION $((SECONDS - T0))s] $*"; }

# A fresh work dir every time: it is cheap (a copy of ~70 MB), its path stays
# the same (so Go's build cache still hits), and nothing half-written from an
# interrupted build survives.
rm -rf "$WORK"
mkdir -p "$WORK"
cp "$MOD_DIR"/go.mod "$MOD_DIR"/go.sum "$MOD_DIR"/*.go "$WORK/"
cd "$WORK"

step "downloading k8s.io/kubernetes@$VERSION"
k8s_dir=$(go mod download -json "k8s.io/kubernetes@$VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[[ -d $k8s_dir ]] || die "go mod download k8s.io/kubernetes@$VERSION gave no directory"
cp -R "$k8s_dir" "$WORK/kubernetes"
chmod -R u+w "$WORK/kubernetes"
go mod edit -replace "k8s.io/kubernetes=./kubernetes"

# openapi_pkgs DIR IMPORT_PATH: the packages below DIR that carry a
# +k8s:openapi-gen= tag, found the way upstream's Makefile finds them (files
# directly in a directory, with a `// +k8s:` line; no _*, .*, vendor or staging)
openapi_pkgs() {
  (cd "$1" && find . \( -name '_*' -o -name '.[^.]*' -o -path ./vendor -o -path ./staging \) -prune -o -type f -name '*.go' -print0 |
    xargs -0 grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' | sed 's|/[^/]*$||; s|^\.||' | LC_ALL=C sort -u |
    sed "s|^|$2|") || true
}

if [[ ! -f kubernetes/pkg/generated/openapi/zz_generated.openapi.go ]]; then
  step "generating pkg/generated/openapi (not shipped in the module)"
  # -mod=mod, in this copy only: the generator loads API packages of staging
  # modules that the binary itself does not import (k8s.io/kube-proxy, ...).
  gen_goflags="${GOFLAGS:+$GOFLAGS }-mod=mod"
  GOFLAGS=$gen_goflags go build -o "$WORK/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen
  # the staging modules, as upstream's Makefile sees them under vendor/k8s.io,
  # minus code-generator and the samples, which it leaves out
  staging=$(go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    p = r["Old"]["Path"]
    if p.startswith("k8s.io/") and p not in ("k8s.io/kubernetes", "k8s.io/code-generator") and not p.startswith("k8s.io/sample-"):
        print(p)')
  # shellcheck disable=SC2086 # one module per word
  GOFLAGS=$gen_goflags go mod download -json $staging | python3 -c '
import json, sys
text, dec, i = sys.stdin.read(), json.JSONDecoder(), 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    m, i = dec.raw_decode(text, i)
    if m.get("Error"):
        sys.exit("go mod download %s: %s" % (m["Path"], m["Error"]))
    print(m["Dir"], m["Path"])' >staging-dirs.txt
  {
    openapi_pkgs "$WORK/kubernetes" k8s.io/kubernetes
    while read -r dir path; do openapi_pkgs "$dir" "$path"; done <staging-dirs.txt
  } | LC_ALL=C sort -u >openapi-packages.txt
  GOFLAGS=$gen_goflags ./openapi-gen -i "$(paste -sd, openapi-packages.txt)" \
    -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h kubernetes/hack/boilerplate/boilerplate.generatego.txt \
    -r openapi-violations.report --output-base "$WORK/gen" >openapi-gen.log 2>&1 ||
    { tail -n 20 openapi-gen.log >&2; die "openapi-gen failed (log: $WORK/openapi-gen.log)"; }
  # Upstream's build fails unless the API rule report equals the list it
  # keeps; the same check proves that this ran over the same packages.
  diff -u kubernetes/api/api-rules/violation_exceptions.list openapi-violations.report >&2 ||
    die "the generated OpenAPI differs from upstream's (API rule violations above); see $WORK"
  cp gen/k8s.io/kubernetes/pkg/generated/openapi/zz_generated.openapi.go kubernetes/pkg/generated/openapi/
  step "generated the OpenAPI definitions of $(wc -l <openapi-packages.txt) packages"
fi

step "go build (tags $OLD_BUILD_TAGS)"
go build -tags "$OLD_BUILD_TAGS" -ldflags "$(old_build_ldflags "$VERSION")" -o "$OUT" .
step "built"
