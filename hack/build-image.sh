#!/usr/bin/env bash
# `make image`: the operator's static binary, then the Dockerfile built by the
# image builder this machine has: docker or podman when they work, buildah
# otherwise (installed from Debian when missing). Leaves the image
# localhost/ephemera:<version> in that builder's store and a docker-archive of
# it at target/image/ephemera.tar (for `make image-import`, `docker load`,
# `skopeo copy docker-archive:...`).
#
#   hack/build-image.sh
#   EPHEMERA_IMAGE_BUILDER=docker|podman|buildah hack/build-image.sh   # choose the builder
#
# As root, buildah stores images with the vfs driver (it works everywhere,
# nested in containers too; set STORAGE_DRIVER to use another) and runs with
# chroot isolation: the Dockerfile has no RUN step, so no OCI runtime is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "build-image.sh: $*" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n $version ]] || die "no version in Cargo.toml"
image=localhost/ephemera:$version
archive=target/image/ephemera.tar
binary=target/x86_64-unknown-linux-gnu/release/ephemera

echo "==> $binary, statically linked"
# With --target, RUSTFLAGS reach only the target's code, not build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ephemera
kind=$(file -b "$binary")
[[ $kind == *"statically linked"* || $kind == *"static-pie linked"* ]] || die "$binary is not static: $kind"
# The label carries the revision the binary reports (build.rs decides it, once).
revision=$("$binary" --version | sed -n 's/.*(revision \(.*\))$/\1/p')
[[ -n $revision ]] || die "$binary --version names no revision"

builder=${EPHEMERA_IMAGE_BUILDER:-}
if [[ -z $builder ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
    builder=podman
  else
    builder=buildah
  fi
fi
if [[ $builder == buildah ]] && ! command -v buildah >/dev/null; then
  [[ $(id -u) == 0 ]] || die "no working docker or podman, and buildah is missing: install one of them"
  echo "==> installing buildah from Debian"
  export DEBIAN_FRONTEND=noninteractive
  # `make test` may install the test cluster's packages beside this: one apt at a time
  # (tests/cluster/up.sh takes the same lock). -o: a daemon a package starts never holds it.
  apt_one_at_a_time() { flock -o /tmp/ephemera-apt.lock apt-get "$@"; }
  # Fresh package lists only if the current ones do not have it.
  apt_one_at_a_time install -y -qq --no-install-recommends buildah >/dev/null 2>&1 ||
    { apt_one_at_a_time update -qq && apt_one_at_a_time install -y -qq --no-install-recommends buildah >/dev/null; }
fi

echo "==> $image with $builder (version $version, revision $revision)"
build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" -t "$image" -f Dockerfile .)
mkdir -p "$(dirname "$archive")"
# Written aside and moved: a reader never sees half an archive.
partial=$archive.partial.$$
trap 'rm -f "$partial"' EXIT
case $builder in
  docker)
    docker build "${build_args[@]}"
    docker save -o "$partial" "$image"
    ;;
  podman)
    podman build "${build_args[@]}"
    podman save --format docker-archive -o "$partial" "$image"
    ;;
  buildah)
    isolation=()
    if [[ $(id -u) == 0 ]]; then
      export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
      isolation=(--isolation chroot)
    fi
    replaced=$(buildah images -q "$image" 2>/dev/null || true)
    buildah bud "${isolation[@]}" "${build_args[@]}"
    # The image this build untagged would stay in the store (a full copy with vfs) forever.
    if [[ -n $replaced && $replaced != "$(buildah images -q "$image")" ]]; then
      buildah rmi "$replaced" >/dev/null 2>&1 || true
    fi
    buildah push "$image" "docker-archive:$partial:$image"
    ;;
  *) die "unknown EPHEMERA_IMAGE_BUILDER=$builder (docker, podman or buildah)" ;;
esac
mv -f "$partial" "$archive"
echo "==> $image, and $archive ($(du -h "$archive" | cut -f1))"
