//! Fault tests (issue 13): the operator is killed at chosen moments, the API
//! server, etcd and the kubelet restart, a pod is hot, targets churn, the
//! leader dies, the network flaps, and thousands of sessions come and go.
//! Nothing may be lost or injected twice, and no status may lie.
//!
//! Each test prints one line `FAULTS <test>: <figures>` (also appended to
//! target/faults-summary.txt). They flood the cluster or stop its daemons, so
//! they refuse the shared default cluster: `make test-faults` runs them on
//! instances of their own (tests/cluster, `EPHEMERA_CLUSTER_DIR`), the tests of
//! `restarts` on one more, since they stop the API server, etcd and the kubelet.

#[allow(dead_code)]
#[path = "../e2e/common.rs"]
mod common;
mod kill_trace;
mod proxy;
#[allow(dead_code)]
mod support;

mod churn;
mod crash_storm;
mod hot_pod;
mod hygiene;
mod network;
mod restarts;
