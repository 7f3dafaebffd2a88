# ephemera: `make demo` and `make test` are the quick start (see README.md).
SHELL := /bin/bash
CLUSTER_DIR ?= /tmp/ephemera-cluster
export EPHEMERA_CLUSTER_DIR := $(CLUSTER_DIR)
KUBECTL := $(CLUSTER_DIR)/bin/kubectl --kubeconfig $(CLUSTER_DIR)/kubeconfig
CARGO ?= cargo

include tests/cluster/cluster.mk

.PHONY: build crds test unit-test e2e-test demo demo-stop lint

build:
	$(CARGO) build --release --locked

crds:
	$(CARGO) run --quiet --locked -- crd > crds/debugsession.yaml

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit-test:
	$(CARGO) test --locked --lib --test crd_drift

# Everything CI runs: unit tests, then the cluster harness and the controller against a real cluster.
test: unit-test cluster-up cluster-test e2e-test

e2e-test: cluster-up
	$(CARGO) build --locked
	EPHEMERA_CLUSTER_DIR=$(CLUSTER_DIR) $(CARGO) test --locked --test e2e -- --test-threads=$${E2E_THREADS:-4}

# Brings up the cluster, runs the operator and debugs the tomcat-test pod.
demo: cluster-up
	$(CARGO) build --locked
	./hack/demo.sh

demo-stop:
	-kill $$(cat $(CLUSTER_DIR)/pids/ephemera.pid 2>/dev/null) 2>/dev/null
	rm -f $(CLUSTER_DIR)/pids/ephemera.pid
