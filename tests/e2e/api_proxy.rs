//! API servers that Kubernetes 1.34 cannot be, and a race that is hard to time.
//!
//! 1.34 always serves ephemeral containers (the feature gate was removed in
//! 1.27) and no older API server can be built here. So the operator talks to
//! the real 1.34 API server through a loopback proxy that changes exactly one
//! thing, by [`Mode`]; everything else passes through unchanged, and every
//! request is recorded (the proxy's plumbing is shared with the benchmark:
//! [`crate::proxy`]).

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
use crate::proxy::{RequestLog, send_upstream, serve_on_loopback, write_kubeconfig};

#[derive(Clone, Copy)]
pub enum Mode {
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
    /// and its first write.
    RivalBeforeFirstWrite,
    /// Changes nothing; the request log counts what the operator asks.
    PassThrough,
    /// Every LIST of pods (the one that gives the pod watch its starting point included) is answered this much later.
    SlowPodLists(Duration),
    /// Every write to pods/ephemeralcontainers is sent on this much later, so
    /// the session stays Pending (its claim written, the pod untouched) meanwhile.
    SlowEphemeralWrites(Duration),
    /// Every write of a DebugSession's status (the claim too) is sent on this much later.
    SlowStatusWrites(Duration),
    /// Watches of pods are answered but hear nothing until [`Proxy::expire_pod_watch`],
    /// which ends them with 410 Expired (the server forgot their history, as after
    /// etcd compacted it while the watch was away); later ones pass through.
    PodWatchSilentUntilExpired,
    /// Every event of a DebugSession watch reaches the operator this much
    /// later, in order: its cache lags behind its own status writes.
    SlowSessionWatch(Duration),
}

/// When silenced pod watches end with 410 Expired.
#[derive(Default)]
struct PodWatchExpiry {
    expired: AtomicBool,
    notify: tokio::sync::Notify,
}

impl PodWatchExpiry {
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.expired.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Clone)]
pub struct Proxy {
    client: kube::Client,
    mode: Mode,
    rival_added: Arc<AtomicBool>,
    /// Paths of the writes being held back right now (SlowStatusWrites).
    held: Arc<std::sync::Mutex<Vec<String>>>,
    pod_watch_expiry: Arc<PodWatchExpiry>,
    /// Every request the operator sent.
    pub requests: RequestLog,
}

impl Proxy {
    /// Requests whose method is `method` and whose path ends with `suffix` (query left out).
    pub fn count(&self, method: &http::Method, suffix: &str) -> usize {
        self.requests.count(method, suffix)
    }

    /// Waits until a write to a path ending with `suffix` is being held back.
    pub async fn wait_held(&self, suffix: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.held.lock().unwrap().iter().any(|path| path.ends_with(suffix)) {
            assert!(tokio::time::Instant::now() < deadline, "no write to …{suffix} arrived within 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Everything but watches.
    pub fn non_watch_requests(&self) -> Vec<(http::Method, String)> {
        self.requests.non_watch()
    }

    /// Ends the silenced pod watches with 410 Expired (PodWatchSilentUntilExpired).
    pub fn expire_pod_watch(&self) {
        self.pod_watch_expiry.expired.store(true, Ordering::SeqCst);
        self.pod_watch_expiry.notify.notify_waiters();
    }
}

/// A pod watch that hears nothing until the expiry, then 410 Expired, as the API server sends it.
fn silent_until_expired(expiry: Arc<PodWatchExpiry>) -> Response {
    let status = failure_status(http::StatusCode::GONE, "Expired", "too old resource version");
    let expired = serde_json::json!({ "type": "ERROR", "object": status });
    let body = futures::stream::once(async move {
        expiry.wait().await;
        Ok::<_, std::io::Error>(format!("{expired}\n"))
    });
    Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("a watch response")
}

/// `body` with each of its chunks passed on `delay` after it arrived, in order.
fn delayed(body: Body, delay: Duration) -> Body {
    use futures::StreamExt;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut chunks = body.into_data_stream();
    tokio::spawn(async move {
        while let Some(chunk) = chunks.next().await {
            if sender.send((tokio::time::Instant::now() + delay, chunk)).is_err() {
                break;
            }
        }
    });
    Body::from_stream(futures::stream::unfold(receiver, |mut receiver| async move {
        let (due, chunk) = receiver.recv().await?;
        tokio::time::sleep_until(due).await;
        Some((chunk, receiver))
    }))
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    match try_forward(proxy, request).await {
        Ok(response) => response,
        Err(error) => (http::StatusCode::BAD_GATEWAY, format!("test proxy: {error}")).into_response(),
    }
}

/// A `Status` of failure, as the API server words it.
fn failure_status(code: http::StatusCode, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": message,
    })
}

fn failure(code: http::StatusCode, reason: &str, message: &str) -> Response {
    (code, failure_status(code, reason, message).to_string()).into_response()
}

async fn try_forward(proxy: Proxy, request: Request) -> Result<Response, crate::proxy::BoxError> {
    let Proxy { client, mode, rival_added, held, pod_watch_expiry, requests } = proxy;
    let path = request.uri().path().to_string();
    let watch = request.uri().query().unwrap_or_default().contains("watch");
    match mode {
        Mode::PodWatchSilentUntilExpired
            if watch && path.ends_with("/pods") && !pod_watch_expiry.expired.load(Ordering::SeqCst) =>
        {
            let path_and_query = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let logged = requests.start(request.method(), &path_and_query);
            requests.answered(logged, 200);
            return Ok(silent_until_expired(pod_watch_expiry));
        }
        Mode::SlowPodLists(delay) if request.method() == http::Method::GET && path.ends_with("/pods") && !watch => {
            tokio::time::sleep(delay).await;
        }
        Mode::SlowEphemeralWrites(delay)
            if request.method() != http::Method::GET && path.ends_with("/ephemeralcontainers") =>
        {
            tokio::time::sleep(delay).await;
        }
        Mode::SlowStatusWrites(delay)
            if request.method() != http::Method::GET
                && path.contains("/debugsessions/")
                && path.ends_with("/status") =>
        {
            held.lock().unwrap().push(path.clone());
            tokio::time::sleep(delay).await;
            held.lock().unwrap().retain(|p| *p != path);
        }
        _ => {}
    }
    let write = request.method() != http::Method::GET;
    // A write's body is kept, so a test can tell what each status write said.
    let (request, logged) = requests.start_request(request).await?;
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
    let response = send_upstream(&client, request).await?;
    requests.answered(logged, response.status().as_u16());
    if let Mode::SlowSessionWatch(delay) = mode
        && watch
        && path.ends_with("/debugsessions")
    {
        let (parts, body) = response.into_parts();
        return Ok(Response::from_parts(parts, delayed(body, delay)));
    }
    if path == "/api/v1" && matches!(mode, Mode::GateOff) {
        let (mut parts, body) = response.into_parts();
        let mut list: serde_json::Value = serde_json::from_slice(&axum::body::to_bytes(body, usize::MAX).await?)?;
        if let Some(resources) = list["resources"].as_array_mut() {
            resources.retain(|r| r["name"] != "pods/ephemeralcontainers");
        }
        parts.headers.remove(http::header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, Body::from(list.to_string())));
    }
    Ok(response)
}

/// An operator for `env`'s namespace that sees the cluster through a proxy in `mode`.
pub async fn start_operator_behind_proxy(env: &mut TestEnv, mode: Mode) -> Proxy {
    start_operator_behind_proxy_on(env, mode, "127.0.0.1:0").await
}

/// The same, with /metrics on `port`.
pub async fn start_operator_behind_proxy_with_metrics(env: &mut TestEnv, mode: Mode, port: u16) -> Proxy {
    start_operator_behind_proxy_on(env, mode, &format!("127.0.0.1:{port}")).await
}

async fn start_operator_behind_proxy_on(env: &mut TestEnv, mode: Mode, metrics_addr: &str) -> Proxy {
    let client = crate::common::client_for("admin").await;
    let proxy = Proxy {
        client,
        mode,
        rival_added: Arc::default(),
        held: Arc::default(),
        pod_watch_expiry: Arc::default(),
        requests: RequestLog::default(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy.clone());
    let port = serve_on_loopback(app).await;
    let kubeconfig = std::env::temp_dir().join(format!("{}-proxy.kubeconfig", env.namespace));
    write_kubeconfig(&kubeconfig, port);
    env.operator = Some(Operator::start_with_kubeconfig(&env.namespace, &kubeconfig, "proxy", metrics_addr));
    proxy
}

/// A test namespace with a running pod `web`, an operator that sees the
/// cluster through a proxy in `mode`, and a session `dbg` debugging `web`.
async fn env_behind_proxy(name: &str, mode: Mode) -> (TestEnv, Proxy) {
    let mut env = TestEnv::without_operator(name, &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let proxy = start_operator_behind_proxy(&mut env, mode).await;
    env.create_session("metadata: { name: dbg }\nspec:\n  target: { pod: web }\n  image: localhost/busybox:1.36\n")
        .await;
    (env, proxy)
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
    let (env, _) = env_behind_proxy("gate-off", Mode::GateOff).await;
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
    let (env, _) = env_behind_proxy("gate-off-write", Mode::GateOffOnWrite).await;
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
    let (env, _) = env_behind_proxy("deleted-before-write", Mode::PodDeletedBeforeWrite).await;
    // The write's 404 names the pod: it went away, ephemeral containers did not.
    let message = failure_of_dbg(&env, FailureReason::TargetNotFound).await;
    assert!(message.contains("pod web does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rival_write_between_read_and_write_costs_nothing() {
    let mut env = TestEnv::without_operator("rival", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let earlier = serde_json::json!({ "spec": { "ephemeralContainers": [{
        "name": "earlier", "image": crate::common::IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "600"],
    }]}});
    env.pods.patch_ephemeral_containers("web", &PatchParams::default(), &Patch::Strategic(earlier)).await.unwrap();
    let proxy = start_operator_behind_proxy(&mut env, Mode::RivalBeforeFirstWrite).await;
    env.create_session("metadata: { name: dbg }\nspec:\n  target: { pod: web }\n  image: localhost/busybox:1.36\n")
        .await;
    let status = env.wait_phase("dbg", Phase::Running).await.status.unwrap();
    let name = status.container_name.unwrap();
    // Ours went in with one write, merged by name as `kubectl debug`'s are (which puts
    // it first): a merge needs no resourceVersion, so an unrelated writer is no conflict.
    assert_eq!(env.ephemeral_names("web").await, vec![name.clone(), "rival".to_string(), "earlier".to_string()]);
    assert_eq!(proxy.count(&http::Method::PATCH, "/ephemeralcontainers"), 1, "{:?}", proxy.non_watch_requests());
    assert_eq!(status.ephemeral_containers_at_injection, vec!["rival".to_string(), "earlier".to_string(), name]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rival_first_container_costs_nothing_either() {
    // The pod had none when the operator read it, and has one when it writes.
    let (env, proxy) = env_behind_proxy("rival-first", Mode::RivalBeforeFirstWrite).await;
    let status = env.wait_phase("dbg", Phase::Running).await.status.unwrap();
    let name = status.container_name.unwrap();
    assert_eq!(env.ephemeral_names("web").await, vec![name.clone(), "rival".to_string()]);
    assert_eq!(proxy.count(&http::Method::PATCH, "/ephemeralcontainers"), 1, "{:?}", proxy.non_watch_requests());
    assert_eq!(status.ephemeral_containers_at_injection, vec!["rival".to_string(), name]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_watch_whose_history_expired_wakes_every_listening_session() {
    let mut env = TestEnv::without_operator("pod-watch-expired", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let proxy = start_operator_behind_proxy(&mut env, Mode::PodWatchSilentUntilExpired).await;
    env.create_session(
        "metadata: { name: dbg }\nspec:\n  target: { pod: web }\n  image: localhost/busybox:1.36\n  command: [\"sh\", \"-c\", \"sleep 3\"]\n  stdin: false\n  tty: false\n",
    )
    .await;
    // The container runs and exits; the operator, deaf to the pod, cannot know.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pod = env.pods.get("web").await.unwrap();
        let statuses = pod.status.and_then(|s| s.ephemeral_container_statuses).unwrap_or_default();
        if statuses.iter().any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some())) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the debug container did not exit");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deaf = env.sessions.get("dbg").await.unwrap();
    let phase = deaf.status.as_ref().and_then(|s| s.phase);
    assert_ne!(phase, Some(Phase::Terminated), "the pod watch was silent, yet the operator knew: {:?}", deaf.status);

    // The watch starts from the pods' version as of then: a list of one pod,
    // never a list of them all, at the start or after the expiry.
    let pod_lists = || -> Vec<crate::proxy::Logged> {
        let all = proxy.requests.since(0).into_iter();
        all.filter(|l| !l.is_watch() && l.method == http::Method::GET && l.bare_path().ends_with("/pods")).collect()
    };
    assert_eq!(pod_lists().len(), 1, "{:#?}", pod_lists());

    proxy.expire_pod_watch();
    let expired_at = tokio::time::Instant::now();
    let session = env.wait_phase("dbg", Phase::Terminated).await;
    eprintln!("Terminated {:?} after the pod watch expired (was {phase:?})", expired_at.elapsed());
    assert!(expired_at.elapsed() < Duration::from_secs(10), "{:?}", expired_at.elapsed());
    assert_eq!(session.status.unwrap().exit_code, Some(0));
    let lists = pod_lists();
    assert_eq!(lists.len(), 2, "one more after the expiry: {lists:#?}");
    assert!(lists.iter().all(|l| l.path.contains("limit=1")), "{lists:#?}");
}

/// A session watch that lags several of the operator's own status writes
/// behind (as with 200 sessions at once) must not make it write again what it
/// wrote: each reconcile starts from its last write, and the late echoes of
/// its earlier writes wake nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_watch_several_writes_behind_adds_no_status_write() {
    let mut env = TestEnv::without_operator("session-watch-behind", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let proxy = start_operator_behind_proxy(&mut env, Mode::SlowSessionWatch(Duration::from_secs(6))).await;
    env.create_session(
        "metadata: { name: dbg }\nspec:\n  target: { pod: web }\n  image: localhost/busybox:1.36\n  command: [\"sh\", \"-c\", \"sleep 2\"]\n  stdin: false\n  tty: false\n",
    )
    .await;
    // The claim, Running and Terminated all go out before the claim's echo is back.
    let session = env.wait_phase("dbg", Phase::Terminated).await;
    // Then every echo arrives; none may cause a write.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // What each status write said: its phase, and its container's state and reason.
    let status_writes: Vec<serde_json::Value> = proxy
        .requests
        .since(0)
        .into_iter()
        .filter(|l| l.method == http::Method::PATCH && l.bare_path().ends_with("/debugsessions/dbg/status"))
        .map(|l| {
            let status = &serde_json::from_str::<serde_json::Value>(&l.body).expect("a status write is JSON")["status"];
            let container = &status["containers"][0];
            serde_json::json!([status["phase"], container["state"], container["reason"]])
        })
        .collect();
    let log = std::fs::read_to_string(&env.operator.as_ref().unwrap().log).unwrap();
    let lag = log.lines().filter(|l| l.contains("lags behind our own status writes")).collect::<Vec<_>>();
    let most_behind = lag
        .iter()
        .filter_map(|l| l.split("writes_behind=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .max();
    assert!(most_behind >= Some(2), "the cache was never two writes behind: {lag:#?}");
    // The claim, Running and Terminated, and Injected only if the kubelet took
    // longer than the first report's wait (a loaded CI machine): each write new.
    assert_eq!(status_writes.first().map(|w| &w[0]), Some(&serde_json::json!("Pending")), "{status_writes:#?}");
    assert_eq!(status_writes.last().map(|w| &w[0]), Some(&serde_json::json!("Terminated")), "{status_writes:#?}");
    for (i, write) in status_writes.iter().enumerate() {
        assert!(!status_writes[..i].contains(write), "a status write repeated an earlier one: {status_writes:#?}");
    }
    let status = session.status.unwrap();
    assert_eq!(status.exit_code, Some(0));
    let now = env.sessions.get("dbg").await.unwrap();
    assert_eq!(now.status.unwrap().containers, status.containers, "the record (injectedAt too) stays as first written");
}
