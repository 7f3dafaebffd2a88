# Local test cluster targets; include from the top-level Makefile:
#   include tests/cluster/cluster.mk
# All targets need root. See tests/cluster/README.md.

EPHEMERA_CLUSTER_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
# the older Kubernetes versions that have a module under k8s/ (1.21 1.22 1.24)
EPHEMERA_OLD_K8S := $(sort $(patsubst $(EPHEMERA_CLUSTER_MK_DIR)/k8s/v%/go.mod,%,$(wildcard $(EPHEMERA_CLUSTER_MK_DIR)/k8s/v*/go.mod)))
# extra up.sh arguments, e.g. CLUSTER_UP_ARGS="--kubernetes 1.21 --feature-gates EphemeralContainers=true"
CLUSTER_UP_ARGS ?=

.PHONY: cluster-up cluster-up-control-plane cluster-down cluster-test cluster-deps
.PHONY: cluster-deps-versions cluster-test-versions

## cluster-up: start the full one-node cluster (prints `export KUBECONFIG=...`)
cluster-up:
	$(EPHEMERA_CLUSTER_MK_DIR)/up.sh $(CLUSTER_UP_ARGS)

## cluster-up-control-plane: etcd + kube-apiserver + kube-controller-manager only
cluster-up-control-plane:
	$(EPHEMERA_CLUSTER_MK_DIR)/up.sh --control-plane-only $(CLUSTER_UP_ARGS)

## cluster-down: stop the cluster and remove its state
cluster-down:
	$(EPHEMERA_CLUSTER_MK_DIR)/down.sh

## cluster-test: acceptance test of the cluster itself (tears down any running one)
cluster-test:
	$(EPHEMERA_CLUSTER_MK_DIR)/acceptance.sh

## cluster-deps: install the Debian packages and build/cache the binary, start nothing
cluster-deps:
	$(EPHEMERA_CLUSTER_MK_DIR)/up.sh --deps-only

## cluster-deps-versions: also build/cache the binaries of the older versions, start nothing
cluster-deps-versions: cluster-deps
	set -e; for v in $(EPHEMERA_OLD_K8S); do $(EPHEMERA_CLUSTER_MK_DIR)/up.sh --deps-only --kubernetes $$v; done

## cluster-test-versions: acceptance test of the older versions, each in its own
## state dir and instance (the default cluster is left alone, so this may run
## next to the e2e tests)
cluster-test-versions: cluster-deps-versions
	$(EPHEMERA_CLUSTER_MK_DIR)/acceptance-versions.sh
