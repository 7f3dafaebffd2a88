# Local test cluster targets; include from the top-level Makefile:
#   include tests/cluster/cluster.mk
# All targets need root. See tests/cluster/README.md.

EPHEMERA_CLUSTER_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: cluster-up cluster-up-control-plane cluster-down cluster-test cluster-deps

## cluster-up: start the full one-node cluster (prints `export KUBECONFIG=...`)
cluster-up:
	$(EPHEMERA_CLUSTER_MK_DIR)/up.sh

## cluster-up-control-plane: etcd + kube-apiserver + kube-controller-manager only
cluster-up-control-plane:
	$(EPHEMERA_CLUSTER_MK_DIR)/up.sh --control-plane-only

## cluster-down: stop the cluster and remove its state
cluster-down:
	$(EPHEMERA_CLUSTER_MK_DIR)/down.sh

## cluster-test: acceptance test of the cluster itself (tears down any running one)
cluster-test:
	$(EPHEMERA_CLUSTER_MK_DIR)/acceptance.sh

## cluster-deps: install the Debian packages and build/cache the binary, start nothing
cluster-deps:
	$(EPHEMERA_CLUSTER_MK_DIR)/up.sh --deps-only
