//! HTTP endpoints for Prometheus and the kubelet's probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// What `/readyz` waits for. A standby replica is ready once it knows it is
/// one; the leader once both of its watches have listed everything.
#[derive(Debug, Default)]
pub struct Health {
    pub lease_known: AtomicBool,
    pub leading: AtomicBool,
    pub sessions_synced: AtomicBool,
    pub pods_synced: AtomicBool,
}

impl Health {
    /// Without leader election: always the leader.
    pub fn sole_leader() -> Arc<Self> {
        let health = Health::default();
        health.lease_known.store(true, Ordering::Relaxed);
        health.leading.store(true, Ordering::Relaxed);
        Arc::new(health)
    }

    /// What is still missing, or `None` when ready.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.lease_known.load(Ordering::Relaxed) {
            return Some("leader election has not reached the lease yet");
        }
        if !self.leading.load(Ordering::Relaxed) {
            return None;
        }
        if !self.sessions_synced.load(Ordering::Relaxed) {
            return Some("the DebugSession watch has not listed all sessions yet");
        }
        if !self.pods_synced.load(Ordering::Relaxed) {
            return Some("the pod watch has not listed all pods yet");
        }
        None
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    match shared.health.not_ready() {
        None => (StatusCode::OK, "ok".into()),
        Some(missing) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {missing}")),
    }
}

/// Binds `addr` now, so that a port already taken is a startup error, not a silent one.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        std::io::Error::new(error.kind(), format!("cannot serve /metrics, /healthz and /readyz on {addr}: {error}"))
    })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(s): State<Shared>| async move { s.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_everything_is_known() {
        let health = Health::sole_leader();
        assert!(health.not_ready().unwrap().contains("DebugSession watch"));
        health.sessions_synced.store(true, Ordering::Relaxed);
        assert!(health.not_ready().unwrap().contains("pod watch"));
        health.pods_synced.store(true, Ordering::Relaxed);
        assert_eq!(health.not_ready(), None);

        let standby = Health::default();
        assert!(standby.not_ready().unwrap().contains("lease"));
        standby.lease_known.store(true, Ordering::Relaxed);
        assert_eq!(standby.not_ready(), None, "a standby that knows it is one is ready");
    }
}
