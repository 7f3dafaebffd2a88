//! Two loopback proxies between an operator and the API server, each the one
//! place where a test injects its network faults.
//!
//! - [`HttpProxy`] speaks plain HTTP to the operator and HTTPS (as admin) to the
//!   API server. It logs every request with its time, counts the watches that
//!   are open, answers 502 while the API server cannot be reached (as a load
//!   balancer does; kube retries no 502), and can hold one chosen request so
//!   that a test kills the operator at exactly that point.
//! - [`TcpProxy`] forwards raw TCP (TLS stays end to end) and can drop every
//!   connection, refuse new ones, or black-hole the open ones while passing
//!   new ones, as a NAT or load balancer that forgot its connections does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::common::{cluster_dir, kubeconfig};

/// A request the operator sent, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    pub watch: bool,
    /// The answer's status code, once answered (watches: when the answer began).
    pub status: Option<u16>,
    /// How long until that answer.
    pub took: Option<Duration>,
    /// The sessions whose debug containers a write to pods/ephemeralcontainers carries.
    pub injects_for: Vec<String>,
}

impl Logged {
    /// A write to pods/ephemeralcontainers carrying the container of `session`
    /// (`namespace/name`), which the API server took.
    fn took_container_of(&self, session: &str) -> bool {
        self.status.is_some_and(|code| code < 300) && self.injects_for.iter().any(|s| s == session)
    }
}

/// Where the proxy may stop the operator's work on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    /// The claim (Pending status) is written; the write to pods/ephemeralcontainers is held, unsent.
    BeforeInjection,
    /// The write to pods/ephemeralcontainers reached the API server and was applied; its answer is held.
    InjectionAnswer,
    /// The container is in the pod and the operator knows it; its next status write is held, unsent.
    StatusAfterInjection,
}

#[derive(Default)]
struct Hold {
    point: Option<HoldPoint>,
    /// Sessions (`namespace/name`) whose container went in while `StatusAfterInjection` was armed.
    injected: HashSet<String>,
}

struct Shared {
    upstream: kube::Client,
    log: Mutex<Vec<Logged>>,
    open_watches: AtomicI64,
    hold: Mutex<Hold>,
    held: mpsc::UnboundedSender<(HoldPoint, String)>,
    /// Bumped by [`HttpProxy::release`]: every held request then ends, unsent or unanswered,
    /// or goes on (with `true`, by [`HttpProxy::pass`]).
    release: watch::Sender<(u64, bool)>,
}

pub struct HttpProxy {
    pub port: u16,
    shared: Arc<Shared>,
    held: tokio::sync::Mutex<mpsc::UnboundedReceiver<(HoldPoint, String)>>,
}

/// A client of the cluster as admin that never retries by itself: what the
/// API server answers reaches the operator as it is.
pub async fn admin_upstream() -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig()).expect("read kubeconfig");
    let options = kube::config::KubeConfigOptions { context: Some("admin".into()), ..Default::default() };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("admin context");
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

impl HttpProxy {
    pub async fn start() -> Self {
        let (held_tx, held_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            upstream: admin_upstream().await,
            log: Mutex::default(),
            open_watches: AtomicI64::new(0),
            hold: Mutex::default(),
            held: held_tx,
            release: watch::channel((0, false)).0,
        });
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, shared, held: tokio::sync::Mutex::new(held_rx) }
    }

    /// A kubeconfig for the operator: this proxy, no credentials (the proxy has them).
    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        write_kubeconfig(name, &format!("http://127.0.0.1:{}", self.port), false)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Writes the request log to target/e2e-logs/<name>-requests.log, times relative to `since`.
    pub fn write_log(&self, name: &str, since: Instant) {
        let text: String = self
            .log()
            .iter()
            .map(|r| {
                let at = r.at.checked_duration_since(since).map_or(-(since - r.at).as_secs_f64(), |d| d.as_secs_f64());
                let took = r.took.map_or("-".into(), |t| format!("{:.3}", t.as_secs_f64()));
                format!("{at:9.3} {took:>7} {:?} {} {}\n", r.status, r.method, r.path)
            })
            .collect();
        let _ = std::fs::write(crate::common::repo_root().join(format!("target/e2e-logs/{name}-requests.log")), text);
    }

    /// Requests (watches included) sent in `[from, to)`.
    pub fn requests_between(&self, from: Instant, to: Instant) -> Vec<Logged> {
        self.log().into_iter().filter(|r| r.at >= from && r.at < to).collect()
    }

    /// When the last write sent since `since` that carried the container of
    /// `session` (`namespace/name`) reached the proxy, if the API server took it.
    pub fn injected_at(&self, session: &str, since: Instant) -> Option<Instant> {
        let log = self.shared.log.lock().unwrap();
        log.iter().rev().take_while(|r| r.at >= since).find(|r| r.took_container_of(session)).map(|r| r.at)
    }

    /// When the API server answered the first write sent since `since` that
    /// carried the container of `session` (`namespace/name`) and was taken.
    pub fn first_injection_done(&self, session: &str, since: Instant) -> Option<Instant> {
        let log = self.shared.log.lock().unwrap();
        log.iter()
            .filter(|r| r.at >= since)
            .find(|r| r.took_container_of(session))
            .and_then(|r| r.took.map(|took| r.at + took))
    }

    pub fn open_watches(&self) -> i64 {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// From now on, the first request of the operator at `point` is held (see [`HoldPoint`]).
    pub fn arm(&self, point: HoldPoint) {
        // Holds left over from an earlier round are not this round's.
        if let Ok(mut held) = self.held.try_lock() {
            while held.try_recv().is_ok() {}
        }
        let mut hold = self.shared.hold.lock().unwrap();
        hold.point = Some(point);
        hold.injected.clear();
    }

    /// Waits until a request is held; returns where, and the session (`namespace/name`).
    pub async fn held(&self, timeout: Duration) -> Option<(HoldPoint, String)> {
        let mut held = self.held.lock().await;
        tokio::time::timeout(timeout, held.recv()).await.ok().flatten()
    }

    /// Disarms, and ends every held request without sending it on (or answering it).
    pub fn release(&self) {
        self.disarm(false);
    }

    /// Disarms, and lets every held request go on as if nothing had happened.
    pub fn pass(&self) {
        self.disarm(true);
    }

    fn disarm(&self, forward: bool) {
        let mut hold = self.shared.hold.lock().unwrap();
        hold.point = None;
        hold.injected.clear();
        self.shared.release.send_modify(|(epoch, go_on)| {
            *epoch += 1;
            *go_on = forward;
        });
    }
}

/// `namespace/name` of the sessions whose containers a write to
/// pods/ephemeralcontainers adds (their markers), in the order it names them.
fn sessions_of_injection(body: &[u8]) -> Vec<String> {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    let containers = body["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    let marker = |container: &serde_json::Value| {
        container["env"].as_array()?.iter().find(|e| e["name"] == "EPHEMERA_SESSION")?["value"]
            .as_str()
            .map(String::from)
    };
    containers.iter().filter_map(marker).collect()
}

/// `namespace/name` of a status write's session.
fn session_of_status_write(path: &str) -> Option<String> {
    // /apis/ephemera.dev/v1alpha1/namespaces/NS/debugsessions/NAME/status
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [.., "namespaces", ns, "debugsessions", name, "status"] => Some(format!("{ns}/{name}")),
        _ => None,
    }
}

fn unreachable_answer(error: &dyn std::fmt::Display) -> Response {
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadGateway", "code": 502,
        "message": format!("test proxy: the API server cannot be reached: {error}"),
    });
    (http::StatusCode::BAD_GATEWAY, status.to_string()).into_response()
}

/// Decrements the count of open watches when a watch's answer ends (or is dropped).
struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let path_and_query = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let watch = request.uri().query().unwrap_or_default().split('&').any(|p| p == "watch=true" || p == "watch=1");
    let method = request.method().clone();
    let at = Instant::now();
    let index = {
        let mut log = shared.log.lock().unwrap();
        log.push(Logged {
            at,
            method: method.clone(),
            path: path_and_query,
            watch,
            status: None,
            took: None,
            injects_for: Vec::new(),
        });
        log.len() - 1
    };
    let answered = |status: http::StatusCode| {
        let mut log = shared.log.lock().unwrap();
        log[index].status = Some(status.as_u16());
        log[index].took = Some(at.elapsed());
    };
    let (mut parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return (http::StatusCode::BAD_REQUEST, "test proxy: unreadable body").into_response();
    };
    let write = method != http::Method::GET;
    let injection = write && path.ends_with("/ephemeralcontainers");
    let injected = if injection { sessions_of_injection(&body) } else { Vec::new() };
    let mut release = shared.release.subscribe();
    let point = shared.hold.lock().unwrap().point;
    let hold_here = |at: HoldPoint, session: &str| {
        let _ = shared.held.send((at, session.to_string()));
    };
    let held_here = if injection && point == Some(HoldPoint::BeforeInjection) {
        injected.first().map(|session| (HoldPoint::BeforeInjection, session.clone()))
    } else if write && point == Some(HoldPoint::StatusAfterInjection) {
        session_of_status_write(&path)
            .filter(|session| shared.hold.lock().unwrap().injected.contains(session))
            .map(|session| (HoldPoint::StatusAfterInjection, session))
    } else {
        None
    };
    if let Some((at, session)) = held_here {
        hold_here(at, &session);
        let go_on = release.changed().await.is_ok() && release.borrow().1;
        if !go_on {
            return unreachable_answer(&"held and dropped by the test");
        }
    }
    shared.log.lock().unwrap()[index].injects_for = injected.clone();
    parts.headers.remove(http::header::HOST);
    parts.version = http::Version::default();
    let upstream = http::Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
    let answer = match shared.upstream.send(upstream).await {
        Ok(answer) => answer,
        Err(error) => {
            answered(http::StatusCode::BAD_GATEWAY);
            return unreachable_answer(&error);
        }
    };
    let (mut parts, body) = answer.into_parts();
    answered(parts.status);
    parts.version = http::Version::HTTP_11;
    for header in [http::header::CONNECTION, http::header::TRANSFER_ENCODING] {
        parts.headers.remove(header);
    }
    if parts.status.is_success()
        && let Some(session) = injected.first()
    {
        match point {
            Some(HoldPoint::InjectionAnswer) => {
                hold_here(HoldPoint::InjectionAnswer, session);
                let go_on = release.changed().await.is_ok() && release.borrow().1;
                if !go_on {
                    return unreachable_answer(&"answer held and dropped by the test");
                }
            }
            Some(HoldPoint::StatusAfterInjection) => {
                shared.hold.lock().unwrap().injected.extend(injected.iter().cloned());
            }
            _ => {}
        }
    }
    let body = Body::new(body);
    if watch {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        let guard = WatchGuard(shared.clone());
        let stream = body.into_data_stream().map(move |chunk| {
            let _ = &guard;
            chunk
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    Response::from_parts(parts, body)
}

/// Writes a kubeconfig named after `name` for `server`; with `tls`, the cluster's CA
/// and the admin token (for a server that passes TLS through, such as [`TcpProxy`]).
pub fn write_kubeconfig(name: &str, server: &str, tls: bool) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}.kubeconfig"));
    let (authority, user) = if tls {
        let token = std::fs::read_to_string(cluster_dir().join("tokens/admin")).expect("admin token");
        let ca = cluster_dir().join("pki/ca.crt");
        (format!("\n    certificate-authority: {}", ca.display()), format!("{{token: {}}}", token.trim()))
    } else {
        (String::new(), "{}".to_string())
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: faults\n  cluster:\n    server: {server}{authority}\nusers:\n- name: faults\n  user: {user}\ncontexts:\n- name: faults\n  context:\n    cluster: faults\n    user: faults\ncurrent-context: faults\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The API server's address, from the cluster's kubeconfig.
pub fn apiserver_address() -> SocketAddr {
    let config = std::fs::read_to_string(kubeconfig()).unwrap();
    let server = config.lines().find_map(|line| line.trim().strip_prefix("server: https://")).expect("server");
    server.parse().expect("an IP:port server address")
}

/// What [`TcpProxy`] does to connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// Forward everything.
    Pass,
    /// Close every open connection, and every new one as soon as it is accepted.
    Drop,
    /// Keep the open connections but forward nothing on them, in either
    /// direction, and without closing them; forward new ones. Leaving this
    /// mode closes the connections it froze.
    BlackHole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Run,
    Freeze,
    Close,
}

struct TcpState {
    upstream: SocketAddr,
    mode: Mutex<Net>,
    conns: Mutex<Vec<watch::Sender<Conn>>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    frozen: AtomicU64,
}

pub struct TcpProxy {
    pub port: u16,
    state: Arc<TcpState>,
}

/// Counts of a [`TcpProxy`]: connections accepted, refused (closed at once), frozen.
#[derive(Debug, Clone, Copy)]
pub struct TcpCounts {
    pub accepted: u64,
    pub refused: u64,
    pub frozen: u64,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(TcpState {
            upstream,
            mode: Mutex::new(Net::Pass),
            conns: Mutex::default(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            frozen: AtomicU64::new(0),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                if *accepting.mode.lock().unwrap() == Net::Drop {
                    accepting.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let (tx, rx) = watch::channel(Conn::Run);
                accepting.conns.lock().unwrap().push(tx);
                tokio::spawn(pipe(client, accepting.upstream, rx));
            }
        });
        Self { port, state }
    }

    /// A kubeconfig for the operator through this proxy (TLS to the API server, admin token).
    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        write_kubeconfig(name, &format!("https://127.0.0.1:{}", self.port), true)
    }

    pub fn set(&self, mode: Net) {
        *self.state.mode.lock().unwrap() = mode;
        let mut conns = self.state.conns.lock().unwrap();
        conns.retain(|c| !c.is_closed());
        for conn in conns.iter() {
            let next = match (mode, *conn.borrow()) {
                (Net::Drop, _) | (Net::Pass, Conn::Freeze) => Conn::Close,
                (Net::BlackHole, Conn::Run) => {
                    self.state.frozen.fetch_add(1, Ordering::SeqCst);
                    Conn::Freeze
                }
                (_, now) => now,
            };
            let _ = conn.send(next);
        }
    }

    pub fn counts(&self) -> TcpCounts {
        TcpCounts {
            accepted: self.state.accepted.load(Ordering::SeqCst),
            refused: self.state.refused.load(Ordering::SeqCst),
            frozen: self.state.frozen.load(Ordering::SeqCst),
        }
    }
}

async fn pipe(client: TcpStream, upstream: SocketAddr, mut cmd: watch::Receiver<Conn>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16384], vec![0u8; 16384]);
    loop {
        let state = *cmd.borrow_and_update();
        match state {
            Conn::Close => return,
            Conn::Freeze => {
                // Nothing is read or written; the sockets stay open until told otherwise.
                if cmd.changed().await.is_err() {
                    return;
                }
            }
            Conn::Run => tokio::select! {
                read = client_read.read(&mut up) => match read {
                    Ok(n) if n > 0 => if server_write.write_all(&up[..n]).await.is_err() { return },
                    _ => return,
                },
                read = server_read.read(&mut down) => match read {
                    Ok(n) if n > 0 => if client_write.write_all(&down[..n]).await.is_err() { return },
                    _ => return,
                },
                changed = cmd.changed() => if changed.is_err() { return },
            },
        }
    }
}
