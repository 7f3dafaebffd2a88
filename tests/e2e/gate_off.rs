//! A cluster whose API server does not serve ephemeral containers.
//!
//! Kubernetes 1.34 always serves them (the feature gate was removed in 1.27),
//! and no older API server can be built here. So the operator talks to the
//! real 1.34 API server through a loopback proxy that does what a 1.16-1.22
//! server with the `EphemeralContainers` gate off does: `pods/ephemeralcontainers`
//! is missing from `/api/v1` discovery and the subresource answers 404.
//! Everything else passes through unchanged.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use ephemera::crd::{FailureReason, Phase};

use crate::common::{Operator, TestEnv, kubectl};

async fn forward(State(client): State<kube::Client>, request: Request) -> Response {
    match try_forward(client, request).await {
        Ok(response) => response,
        Err(error) => (http::StatusCode::BAD_GATEWAY, format!("gate-off proxy: {error}")).into_response(),
    }
}

async fn try_forward(client: kube::Client, request: Request) -> Result<Response, Box<dyn std::error::Error>> {
    let path = request.uri().path().to_string();
    if path.ends_with("/ephemeralcontainers") {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "the server could not find the requested resource",
        });
        return Ok((http::StatusCode::NOT_FOUND, status.to_string()).into_response());
    }
    let (mut parts, body) = request.into_parts();
    parts.headers.remove(http::header::HOST);
    parts.version = http::Version::default();
    let body = axum::body::to_bytes(body, usize::MAX).await?;
    let upstream = http::Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
    let (mut parts, body) = client.send(upstream).await?.into_parts();
    // The upstream connection may be HTTP/2; we answer in HTTP/1.1.
    parts.version = http::Version::HTTP_11;
    for header in [http::header::CONNECTION, http::header::TRANSFER_ENCODING] {
        parts.headers.remove(header);
    }
    if path == "/api/v1" {
        let mut list: serde_json::Value = serde_json::from_slice(&body.collect_bytes().await?)?;
        if let Some(resources) = list["resources"].as_array_mut() {
            resources.retain(|r| r["name"] != "pods/ephemeralcontainers");
        }
        parts.headers.remove(http::header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, Body::from(list.to_string())));
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Serves the gate-off view of the cluster on a loopback port; returns its kubeconfig.
async fn start_proxy(namespace: &str) -> std::path::PathBuf {
    let client = crate::common::client_for("admin").await;
    let app = axum::Router::new().fallback(forward).with_state(client);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let kubeconfig = std::env::temp_dir().join(format!("{namespace}-gate-off.kubeconfig"));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gate-off\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: anyone\n  user: {{}}\ncontexts:\n- name: gate-off\n  context:\n    cluster: gate-off\n    user: anyone\ncurrent-context: gate-off\n"
    );
    std::fs::write(&kubeconfig, yaml).unwrap();
    kubeconfig
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_without_ephemeral_containers_fails_with_advice() {
    let mut env = TestEnv::without_operator("gate-off", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let kubeconfig = start_proxy(&env.namespace).await;
    env.operator = Some(Operator::start_with_kubeconfig(&env.namespace, &kubeconfig, "gate-off", "127.0.0.1:0"));
    env.create_session(
        "metadata: { name: hopeless }\nspec:\n  target: { pod: web }\n  image: localhost/busybox:1.36\n",
    )
    .await;
    let session = env.wait_phase("hopeless", Phase::Failed).await;
    let status = session.status.unwrap();
    assert_eq!(status.reason, Some(FailureReason::EphemeralContainersUnavailable));
    let message = status.message.unwrap();
    assert!(message.contains("does not serve pods/ephemeralcontainers"), "{message}");
    assert!(message.contains("always on from Kubernetes 1.25"), "the proxied server is 1.34: {message}");
    let available = status.conditions.iter().find(|c| c.type_ == "EphemeralContainersAvailable").unwrap();
    assert_eq!(available.status, "False");
    assert!(env.ephemeral_names("web").await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, described) = kubectl(&["describe", "dbgs", "hopeless", "-n", &env.namespace]);
    assert!(described.contains("EphemeralContainersUnavailable"), "{described}");
}
