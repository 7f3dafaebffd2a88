# ephemera: `make demo` and `make test` are the quick start (see README.md).
SHELL := /bin/bash
CLUSTER_DIR ?= /tmp/ephemera-cluster
export EPHEMERA_CLUSTER_DIR := $(CLUSTER_DIR)
KUBECTL := $(CLUSTER_DIR)/bin/kubectl --kubeconfig $(CLUSTER_DIR)/kubeconfig
CARGO ?= cargo

include tests/cluster/cluster.mk

.PHONY: build image image-import crds manifests check-generated test binaries rust-lane unit-test build-tests suites e2e-test versions-test matrix-test test-faults faults-shared faults-restarts demo demo-stop demo-check lint bench bench-long bench-render bench-smoke e2e-lane

build:
	$(CARGO) build --release --locked

# The operator image from the Dockerfile: localhost/ephemera:<version> and
# target/image/ephemera.tar, built with docker, podman or buildah (see hack/build-image.sh).
image:
	./hack/build-image.sh

# Loads that image into the local test cluster (tests/cluster).
image-import: image
	tests/cluster/import-image.sh target/image/ephemera.tar

HELM_VERSION := v3.22.0
HELM := $(HOME)/.cache/ephemera/helm-$(HELM_VERSION)/helm

crds:
	$(CARGO) run --quiet --locked -- crd > crds/debugsession.yaml
	cp crds/debugsession.yaml charts/ephemera/crds/debugsession.yaml
	$(CARGO) run --quiet --locked -- crd --markdown > docs/reference.md

# Helm, built from the Go module proxy once and cached.
$(HELM):
	GOBIN=$(dir $(HELM)) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# deploy/ephemera.yaml: the chart rendered with its defaults, CRD and namespace included.
manifests: $(HELM)
	./hack/render-manifests.sh $(HELM) > deploy/ephemera.yaml

# Fails when crds/, the chart's crds/, docs/reference.md or deploy/ are stale.
check-generated: $(HELM)
	$(CARGO) run --quiet --locked -- crd | diff -u crds/debugsession.yaml -
	$(CARGO) run --quiet --locked -- crd --markdown | diff -u docs/reference.md -
	diff -u crds/debugsession.yaml charts/ephemera/crds/debugsession.yaml
	$(HELM) lint --strict charts/ephemera
	./hack/render-manifests.sh $(HELM) | diff -u deploy/ephemera.yaml -

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit-test: $(HELM)
	EPHEMERA_HELM=$(HELM) $(CARGO) test --locked --lib --test crd_drift --test chart --test docs
	$(MAKE) check-generated

# Everything CI runs: lint and unit tests, the cluster harness acceptance, then two lanes at
# once: the end-to-end tests on the main cluster (which they start through tests/cluster/up.sh
# themselves) followed by the benchmark's smoke run, and the old Kubernetes versions on clusters
# of their own (harness acceptance, then ephemera's version matrix); then the fault suite, alone
# because its recovery times must not be measured on a machine busy with other suites; then the demo. Every binary
# is built before the lanes start, so that no build slows a lane down.
# `binaries` builds everything once; the steps after it are told so (BUILD_TESTS empty reaches
# every sub-make), instead of each lane building the image again.
test: binaries cluster-test
	$(MAKE) BUILD_TESTS= suites test-faults demo-check

# Everything `make test` builds, in two lanes at once: cargo's (lint and unit tests first, then the
# test binaries and the image) and Go's (the cluster's binaries for every Kubernetes version). On a
# cold machine each lane leaves a core idle in its serial steps (linking, fat LTO); the other fills it.
binaries:
	$(MAKE) -j2 --output-sync=target rust-lane cluster-deps-versions

rust-lane:
	$(MAKE) lint
	$(MAKE) unit-test
	$(MAKE) build-tests

suites:
	$(MAKE) -j2 --output-sync=target e2e-lane versions-test

# One after the other: both use the main cluster.
e2e-lane:
	$(MAKE) e2e-test
	$(MAKE) bench-smoke

# What the suites below need built; `make test` empties it once it has built them.
BUILD_TESTS := build-tests
build-tests: $(HELM) image
	$(CARGO) build --locked
	$(CARGO) test --locked --test e2e --test exclusive --test matrix --test faults --bench ephemera --no-run

# The run is bounded (it normally takes under a minute): a wedged cluster fails the
# target instead of eating CI's whole time budget.
# The in-cluster tests install the chart with the image `make image` built.
E2E_TIMEOUT ?= 20m
e2e-test: $(BUILD_TESTS)
	EPHEMERA_HELM=$(HELM) timeout --kill-after=30s $(E2E_TIMEOUT) \
		$(CARGO) test --locked --test e2e -- --test-threads=$${E2E_THREADS:-4}
	# These change what every test shares (the CRD): alone, after the others.
	timeout --kill-after=30s 5m $(CARGO) test --locked --test exclusive -- --test-threads=1

# The old versions: the harness's own acceptance, then ephemera on each (tests/matrix).
versions-test: cluster-test-versions matrix-test

MATRIX_TIMEOUT ?= 15m
matrix-test: $(BUILD_TESTS) cluster-deps-versions
	EPHEMERA_HELM=$(HELM) timeout --kill-after=30s $(MATRIX_TIMEOUT) \
		$(CARGO) test --locked --test matrix -- --test-threads=$${MATRIX_THREADS:-3}

# The fault suite (tests/faults) on two cluster instances of its own, side by side: the tests
# that stop the API server, etcd or the kubelet on one, the others (3 at a time) on the other.
# Each test prints a summary line `FAULTS <test>: ...`, also appended to target/faults-summary.txt
# (with the e2e lane's leader failover under load, which needs the chart's replicas).
# A cluster is left running when its tests fail, to look at; `tests/cluster/down.sh --all` stops it.
FAULTS_DIR ?= /tmp/ephemera-faults
FAULTS_RESTARTS_DIR ?= /tmp/ephemera-faults-restarts
FAULTS_TIMEOUT ?= 25m
# The operator under fault is the image's release binary (`make image`), as shipped: the
# debug build's own slowness would hide what the faults cost.
faults-shared faults-restarts: export EPHEMERA_OPERATOR_BIN = $(CURDIR)/target/x86_64-unknown-linux-gnu/release/ephemera
# tests/faults/kill-trace.sh records every SIGKILL meanwhile, so that a census can name
# who killed a debug container that should run.
test-faults: $(BUILD_TESTS)
	tests/faults/kill-trace.sh start
	$(MAKE) -j2 --output-sync=target faults-shared faults-restarts; rc=$$?; \
		tests/faults/kill-trace.sh stop; exit $$rc
	cat target/faults-summary.txt

faults-shared:
	EPHEMERA_CLUSTER_DIR=$(FAULTS_DIR) tests/cluster/up.sh
	EPHEMERA_CLUSTER_DIR=$(FAULTS_DIR) timeout --kill-after=30s $(FAULTS_TIMEOUT) \
		$(CARGO) test --locked --test faults -- --test-threads=$${FAULTS_THREADS:-3} --skip restarts::
	EPHEMERA_CLUSTER_DIR=$(FAULTS_DIR) tests/cluster/down.sh

faults-restarts:
	EPHEMERA_CLUSTER_DIR=$(FAULTS_RESTARTS_DIR) tests/cluster/up.sh
	EPHEMERA_CLUSTER_DIR=$(FAULTS_RESTARTS_DIR) timeout --kill-after=30s $(FAULTS_TIMEOUT) \
		$(CARGO) test --locked --test faults -- --test-threads=1 restarts::
	EPHEMERA_CLUSTER_DIR=$(FAULTS_RESTARTS_DIR) tests/cluster/down.sh

# Brings up the cluster, runs the operator and debugs the tomcat-test pod.
demo: cluster-up
	$(CARGO) build --locked
	./hack/demo.sh

demo-stop:
	-kill $$(cat $(CLUSTER_DIR)/pids/ephemera.pid 2>/dev/null) 2>/dev/null
	rm -f $(CLUSTER_DIR)/pids/ephemera.pid

# The README's `make demo`, checked: demo.sh fails unless the session reaches Running.
demo-check: demo
	$(MAKE) demo-stop

# The benchmark (not a test): ephemera against `kubectl debug` on the local cluster, request
# counts, idle traffic, memory and connections with 1,000 sessions and 10,000 unrelated pods.
# Writes docs/benchmarks.md and its plots. BENCH_ARGS="--help" lists the knobs.
bench: cluster-up
	$(CARGO) bench --locked --bench ephemera -- $(BENCH_ARGS)

# The same, with 30 minutes of idle traffic.
bench-long: cluster-up
	$(CARGO) bench --locked --bench ephemera -- --long $(BENCH_ARGS)

# docs/benchmarks.md and its plots again from the newest full or long run's figures,
# measuring nothing: for a change to the report's text.
bench-render:
	@figures="$$(ls -t target/bench-results-full.json target/bench-results-long.json 2>/dev/null | head -1)"; \
	if [ -z "$$figures" ]; then echo "no figures in target/bench-results-{full,long}.json: run make bench first" >&2; exit 1; fi; \
	set -x; $(CARGO) bench --locked --bench ephemera -- --render "$$figures"

# A few sessions of every scenario (debug build, no 10,000 pods, figures not asserted),
# so that the benchmark keeps working; part of make test. Report in target/bench-smoke/.
# Its figures, rendered again, must give the same report, so bench-render keeps working too.
bench-smoke:
	timeout --kill-after=30s 5m $(CARGO) test --locked --bench ephemera -- --smoke
	$(CARGO) test --locked --bench ephemera -- --smoke --render target/bench-results-smoke.json \
		--out target/bench-smoke/rendered
	cmp target/bench-smoke/benchmarks.md target/bench-smoke/rendered/benchmarks.md
