# The operator image: a static binary on a distroless base.
#   docker build -t ephemera:dev .
# (Our machines have no Docker engine and no musl target: the end-to-end tests
# build an equivalent image from the glibc binary and the libraries it links,
# with tests/cluster/hack/mkimage.py, and import it into the test cluster.)
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin ephemera

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/ephemera /ephemera
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/ephemera"]
CMD ["run"]
