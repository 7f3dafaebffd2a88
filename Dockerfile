# The operator image: one static binary and nothing else (no shell, no libc),
# run as the unprivileged user 65532. The binary is built outside, as in
# kube-rs/controller-rs:
#
#   make image     # both steps below, with docker, podman or buildah
#
# or by hand:
#
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ephemera
#   docker build -t localhost/ephemera:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse --short HEAD)" .
#
# ephemera uses rustls and ring, so the static glibc build needs no system
# library. .dockerignore sends only the binary as the build context.
FROM scratch
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ephemera" \
      org.opencontainers.image.description="Kubernetes operator: DebugSession resources become ephemeral debug containers" \
      org.opencontainers.image.source="https://github.com/ephemera-dev/ephemera" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY target/x86_64-unknown-linux-gnu/release/ephemera /ephemera
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/ephemera"]
CMD ["run"]
