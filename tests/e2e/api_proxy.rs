//! API servers that Kubernetes 1.34 cannot be, and a race that is hard to time.
//!
//! 1.34 always serves ephemeral containers (the feature gate was removed in
//! 1.27) and no older API server can be built here. So the operator talks to
//! the real 1.34 API server through a loopback proxy that changes exactly one
//! thing, by [`Mode`]; everything else passes through unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use ephemera::crd::{FailureReason, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::common::{Operator, TestEnv, kubectl};

#[derive(Clone, Copy)]
enum Mode {
    /// A 1.16-1.22 server with the `EphemeralContainers` gate off:
    /// `pods/ephemeralcontainers` is missing from `/api/v1` discovery and answers 404.
    GateOff,
    /// A 1.22-1.24 server with the gate off that still lists the subresource:
    /// a write answers 400 "feature EphemeralContainers disabled".
    GateOffOnWrite,
    /// The target pod is deleted between the operator's read and its write,
    /// so the write gets the real server's 404 that names the pod.
    PodDeletedBeforeWrite,
    /// Someone else adds an ephemeral container between the operator's read
    /// and its first write, so that write gets the real server's 409.
    RivalBeforeFirstWrite,
}

#[derive(Clone)]
struct Proxy {
    client: kube::Client,
    mode: Mode,
    rival_added: Arc<AtomicBool>,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    match try_forward(proxy, request).await {
        Ok(response) => response,
        Err(error) => (http::StatusCode::BAD_GATEWAY, format!("test proxy: {error}")).into_response(),
    }
}

fn failure(code: http::StatusCode, reason: &str, message: &str) -> Response {
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": message,
    });
    (code, status.to_string()).into_response()
}

async fn try_forward(proxy: Proxy, request: Request) -> Result<Response, Box<dyn std::error::Error>> {
    let Proxy { client, mode, rival_added } = proxy;
    let path = request.uri().path().to_string();
    let write = request.method() != http::Method::GET;
    if let Some(pod_path) = path.strip_suffix("/ephemeralcontainers") {
        // /api/v1/namespaces/NS/pods/NAME
        let parts: Vec<&str> = pod_path.rsplit('/').collect();
        let (name, namespace) = (parts[0], parts[2]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        match mode {
            Mode::GateOff => {
                let message = "the server could not find the requested resource";
                return Ok(failure(http::StatusCode::NOT_FOUND, "NotFound", message));
            }
            Mode::GateOffOnWrite if write => {
                let message = "feature EphemeralContainers disabled";
                return Ok(failure(http::StatusCode::BAD_REQUEST, "BadRequest", message));
            }
            Mode::RivalBeforeFirstWrite if write && !rival_added.swap(true, Ordering::SeqCst) => {
                let rival = serde_json::json!({ "spec": { "ephemeralContainers": [{
                    "name": "rival", "image": crate::common::IMAGE, "imagePullPolicy": "Never",
                    "command": ["sleep", "600"], "stdin": false, "tty": false,
                }]}});
                pods.patch_ephemeral_containers(name, &PatchParams::default(), &Patch::Strategic(rival)).await?;
            }
            Mode::PodDeletedBeforeWrite if write => {
                pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
                while pods.get_opt(name).await?.is_some() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ => {}
        }
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
    if path == "/api/v1" && matches!(mode, Mode::GateOff) {
        let mut list: serde_json::Value = serde_json::from_slice(&body.collect_bytes().await?)?;
        if let Some(resources) = list["resources"].as_array_mut() {
            resources.retain(|r| r["name"] != "pods/ephemeralcontainers");
        }
        parts.headers.remove(http::header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, Body::from(list.to_string())));
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A test namespace with a running pod `web` and an operator that sees the
/// cluster through a proxy in `mode`.
async fn env_behind_proxy(name: &str, mode: Mode) -> TestEnv {
    let mut env = TestEnv::without_operator(name, &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let client = crate::common::client_for("admin").await;
    let proxy = Proxy { client, mode, rival_added: Arc::default() };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let kubeconfig = std::env::temp_dir().join(format!("{}-proxy.kubeconfig", env.namespace));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: anyone\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: anyone\ncurrent-context: proxy\n"
    );
    std::fs::write(&kubeconfig, yaml).unwrap();
    env.operator = Some(Operator::start_with_kubeconfig(&env.namespace, &kubeconfig, "proxy", "127.0.0.1:0"));
    env.create_session("metadata: { name: dbg }\nspec:\n  target: { pod: web }\n  image: localhost/busybox:1.36\n")
        .await;
    env
}

/// Waits for `dbg` to fail with `reason`; returns its message.
async fn failure_of_dbg(env: &TestEnv, reason: FailureReason) -> String {
    let session = env.wait_phase("dbg", Phase::Failed).await;
    let status = session.status.unwrap();
    assert_eq!(status.reason, Some(reason), "{:?}", status.message);
    let available = status.conditions.iter().find(|c| c.type_ == "EphemeralContainersAvailable").unwrap();
    let expected = if reason == FailureReason::EphemeralContainersUnavailable { "False" } else { "True" };
    assert_eq!(available.status, expected, "{available:?}");
    status.message.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_without_ephemeral_containers_fails_with_advice() {
    let env = env_behind_proxy("gate-off", Mode::GateOff).await;
    let message = failure_of_dbg(&env, FailureReason::EphemeralContainersUnavailable).await;
    assert!(message.contains("does not serve pods/ephemeralcontainers"), "{message}");
    assert!(message.contains("always on from Kubernetes 1.25"), "the proxied server is 1.34: {message}");
    assert!(env.ephemeral_names("web").await.is_empty());
    env.expect_events("dbg", &["EphemeralContainersUnavailable"]).await;
    let (_, described) = kubectl(&["describe", "dbgs", "dbg", "-n", &env.namespace]);
    assert!(described.contains("EphemeralContainersUnavailable"), "{described}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_off_found_only_on_write_fails_with_advice() {
    let env = env_behind_proxy("gate-off-write", Mode::GateOffOnWrite).await;
    let message = failure_of_dbg(&env, FailureReason::EphemeralContainersUnavailable).await;
    assert!(message.contains("feature EphemeralContainers disabled"), "the server's words: {message}");
    assert!(
        message.contains("EphemeralContainers=true feature gate on kube-apiserver and on every kubelet"),
        "{message}"
    );
    assert!(env.ephemeral_names("web").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_deleted_between_read_and_write_is_not_found() {
    let env = env_behind_proxy("deleted-before-write", Mode::PodDeletedBeforeWrite).await;
    // The write's 404 names the pod: it went away, ephemeral containers did not.
    let message = failure_of_dbg(&env, FailureReason::TargetNotFound).await;
    assert!(message.contains("pod web does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_refused_for_a_concurrent_change_is_retried_from_fresh_state() {
    let env = env_behind_proxy("rival", Mode::RivalBeforeFirstWrite).await;
    let session = env.wait_phase("dbg", Phase::Running).await;
    let name = session.status.unwrap().container_name.unwrap();
    // The rival's container stays; ours went in after it, once.
    assert_eq!(env.ephemeral_names("web").await, vec!["rival".to_string(), name]);
    let log = std::fs::read_to_string(&env.operator.as_ref().unwrap().log).unwrap();
    assert!(log.contains("pod changed under us; deciding again from fresh state"), "no conflict was met:\n{log}");
}
