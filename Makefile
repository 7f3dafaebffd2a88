# ephemera: `make demo` and `make test` are the quick start (see README.md).
SHELL := /bin/bash
CLUSTER_DIR ?= /tmp/ephemera-cluster
export EPHEMERA_CLUSTER_DIR := $(CLUSTER_DIR)
KUBECTL := $(CLUSTER_DIR)/bin/kubectl --kubeconfig $(CLUSTER_DIR)/kubeconfig
CARGO ?= cargo

include tests/cluster/cluster.mk

.PHONY: build crds manifests check-generated test unit-test e2e-test demo demo-stop demo-check lint bench bench-long bench-smoke

build:
	$(CARGO) build --release --locked

HELM_VERSION := v3.22.0
HELM := $(HOME)/.cache/ephemera/helm-$(HELM_VERSION)/helm

crds:
	$(CARGO) run --quiet --locked -- crd > crds/debugsession.yaml
	cp crds/debugsession.yaml charts/ephemera/crds/debugsession.yaml

# Helm, built from the Go module proxy once and cached.
$(HELM):
	GOBIN=$(dir $(HELM)) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# deploy/ephemera.yaml: the chart rendered with its defaults, CRD and namespace included.
manifests: $(HELM)
	./hack/render-manifests.sh $(HELM) > deploy/ephemera.yaml

# Fails when crds/, the chart's crds/ or deploy/ are stale.
check-generated: $(HELM)
	$(CARGO) run --quiet --locked -- crd | diff -u crds/debugsession.yaml -
	diff -u crds/debugsession.yaml charts/ephemera/crds/debugsession.yaml
	$(HELM) lint --strict charts/ephemera
	./hack/render-manifests.sh $(HELM) | diff -u deploy/ephemera.yaml -

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit-test:
	$(CARGO) test --locked --lib --test crd_drift
	$(MAKE) check-generated

# Everything CI runs: lint and unit tests, the cluster harness acceptance, the end-to-end tests
# (which start the cluster through tests/cluster/up.sh themselves) and the demo.
test: lint unit-test cluster-test e2e-test bench-smoke demo-check

# The run is bounded (it normally takes under a minute): a wedged cluster fails the
# target instead of eating CI's whole time budget.
E2E_TIMEOUT ?= 20m
e2e-test: $(HELM)
	$(CARGO) build --locked
	$(CARGO) test --locked --test e2e --test exclusive --no-run
	EPHEMERA_HELM=$(HELM) timeout --kill-after=30s $(E2E_TIMEOUT) \
		$(CARGO) test --locked --test e2e -- --test-threads=$${E2E_THREADS:-4}
	# These change what every test shares (the CRD): alone, after the others.
	timeout --kill-after=30s 5m $(CARGO) test --locked --test exclusive -- --test-threads=1

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

# A few sessions of every scenario (debug build, no 10,000 pods, figures not asserted),
# so that the benchmark keeps working; part of make test. Report in target/bench-smoke/.
bench-smoke:
	timeout --kill-after=30s 5m $(CARGO) test --locked --bench ephemera -- --smoke
