//! Leader election over a coordination.k8s.io Lease, so that several replicas
//! can run and one of them reconciles. (Two reconciling at once would still be
//! safe, see `controller::decide`, only wasteful.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use crate::server::Health;

#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// Who holds the lease: the pod name in a cluster.
    pub identity: String,
    /// How long a lease lasts without renewal; a standby takes over after that.
    pub lease_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost the {0} lease; exiting so that a fresh process competes again")]
    Lost(String),
}

/// Waits to hold the lease, then runs `work` while holding it. Returns when
/// `work` ends (releasing the lease for a standby), or with an error as soon
/// as the lease is lost.
pub async fn run_as_leader(
    client: Client,
    election: LeaderElection,
    health: Arc<Health>,
    work: impl Future<Output = ()>,
) -> Result<(), Error> {
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.lease_seconds)
        .with_grace(election.lease_seconds.div_ceil(3).max(1))
        .with_field_manager("ephemera")
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting to become the leader");
    // The first answer tells whether this replica leads or stands by: either way it is ready.
    let mut known = false;
    while !*leading.borrow_and_update() {
        if !known {
            known = true;
            health.lease_known.store(true, Ordering::Relaxed);
        }
        if leading.changed().await.is_err() {
            return Err(lease_task_error(lease_task, &election).await);
        }
    }
    health.leading.store(true, Ordering::Relaxed);
    health.lease_known.store(true, Ordering::Relaxed);
    tracing::info!(identity = %election.identity, "became the leader");
    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                return;
            }
        }
    };
    tokio::select! {
        () = work => {
            drop(leading);
            // Closing the channel makes the lease task release the lease.
            let _ = lease_task.await;
            Ok(())
        }
        () = lost => Err(Error::Lost(election.lease_name)),
    }
}

async fn lease_task_error(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    election: &LeaderElection,
) -> Error {
    match task.await {
        Ok(Err(error)) => Error::Lease(error),
        _ => Error::Lost(election.lease_name.clone()),
    }
}
