//! A loopback HTTP proxy in front of the API server that records every
//! request it forwards: what the end-to-end tests count, and what the
//! benchmark (benches/ephemera) counts. A process pointed at it through
//! [`write_kubeconfig`] talks plain HTTP/1.1 to the proxy; the proxy talks to
//! the API server with a client of its own.
//!
//! [`serve`] forwards everything unchanged; tests that change answers build
//! their own handler around [`send_upstream`] and [`RequestLog::start_request`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

/// One request that went through the proxy.
#[derive(Debug, Clone)]
pub struct Logged {
    /// When the proxy received it.
    pub at: Instant,
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// The API server's status code; 0 until it answered (or when it never did).
    pub status: u16,
    /// How long the API server took to answer (to the headers, for a watch).
    pub took: Option<std::time::Duration>,
    /// The start of the body of a write (empty for reads and for handlers that do not keep it).
    pub body: String,
}

impl Logged {
    pub fn is_watch(&self) -> bool {
        self.path.contains("watch=true") || self.path.contains("watch=1")
    }

    /// The path without the query.
    pub fn bare_path(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Every request forwarded, in the order they arrived.
#[derive(Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<Logged>>>);

impl RequestLog {
    /// Records a request; returns its index, for [`RequestLog::answered`].
    pub fn start(&self, method: &http::Method, path: &str) -> usize {
        self.start_with_body(method, path, String::new())
    }

    pub fn start_with_body(&self, method: &http::Method, path: &str, body: String) -> usize {
        let mut log = self.0.lock().unwrap();
        let at = Instant::now();
        log.push(Logged { at, method: method.clone(), path: path.to_string(), status: 0, took: None, body });
        log.len() - 1
    }

    /// Records `request`, with the start of a write's body; returns it whole
    /// again, with its index for [`RequestLog::answered`].
    pub async fn start_request(&self, request: Request) -> Result<(Request, usize), axum::Error> {
        let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await?;
        let kept = if parts.method == http::Method::GET {
            String::new()
        } else {
            String::from_utf8_lossy(&body[..body.len().min(BODY_KEPT)]).into_owned()
        };
        let index = self.start_with_body(&parts.method, &path, kept);
        Ok((Request::from_parts(parts, Body::from(body)), index))
    }

    pub fn answered(&self, index: usize, status: u16) {
        if let Some(entry) = self.0.lock().unwrap().get_mut(index) {
            entry.status = status;
            entry.took = Some(entry.at.elapsed());
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Everything from the `from`-th request on.
    pub fn since(&self, from: usize) -> Vec<Logged> {
        let log = self.0.lock().unwrap();
        log.get(from..).map(<[Logged]>::to_vec).unwrap_or_default()
    }

    /// When the latest request that is not a watch arrived.
    pub fn last_request_at(&self) -> Option<Instant> {
        self.0.lock().unwrap().iter().rev().find(|l| !l.is_watch()).map(|l| l.at)
    }

    /// Requests whose method is `method` and whose path ends with `suffix` (query left out).
    pub fn count(&self, method: &http::Method, suffix: &str) -> usize {
        let log = self.0.lock().unwrap();
        log.iter().filter(|l| l.method == *method && l.bare_path().ends_with(suffix)).count()
    }

    /// Everything but watches, as (method, path and query).
    pub fn non_watch(&self) -> Vec<(http::Method, String)> {
        let log = self.0.lock().unwrap();
        log.iter().filter(|l| !l.is_watch()).map(|l| (l.method.clone(), l.path.clone())).collect()
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends `request` on to the API server through `client` and returns its
/// answer (in HTTP/1.1, whatever the upstream connection speaks). A watch
/// streams through as it comes; any other answer is read whole first and
/// sent on in one piece, as the API server sends it.
pub async fn send_upstream(client: &kube::Client, request: Request) -> Result<Response, BoxError> {
    let (mut parts, body) = request.into_parts();
    let watch = parts.uri.query().unwrap_or_default().split('&').any(|p| p == "watch=true" || p == "watch=1");
    parts.headers.remove(http::header::HOST);
    parts.version = http::Version::default();
    let body = axum::body::to_bytes(body, usize::MAX).await?;
    let upstream = http::Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
    let (mut parts, body) = client.send(upstream).await?.into_parts();
    parts.version = http::Version::HTTP_11;
    for header in [http::header::CONNECTION, http::header::TRANSFER_ENCODING] {
        parts.headers.remove(header);
    }
    if watch {
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let whole = body.collect_bytes().await?;
    parts.headers.insert(http::header::CONTENT_LENGTH, whole.len().into());
    Ok(Response::from_parts(parts, Body::from(whole)))
}

#[derive(Clone)]
struct PassThrough {
    client: kube::Client,
    log: RequestLog,
}

/// How much of a write's body the log keeps.
const BODY_KEPT: usize = 1_000_000;

async fn pass_through(State(proxy): State<PassThrough>, request: Request) -> Response {
    let Ok((request, index)) = proxy.log.start_request(request).await else {
        return (http::StatusCode::BAD_REQUEST, "counting proxy: unreadable body").into_response();
    };
    match send_upstream(&proxy.client, request).await {
        Ok(response) => {
            proxy.log.answered(index, response.status().as_u16());
            response
        }
        Err(error) => {
            proxy.log.answered(index, http::StatusCode::BAD_GATEWAY.as_u16());
            (http::StatusCode::BAD_GATEWAY, format!("counting proxy: {error}")).into_response()
        }
    }
}

/// Serves `app` on a free loopback port, in the background; returns the port.
/// Its sockets send at once (TCP_NODELAY), as the API server's do (Go sets it
/// on every connection): a small write must not wait for a delayed ACK.
pub async fn serve_on_loopback(app: axum::Router) -> u16 {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let port = listener.local_addr().unwrap().port();
    let listener = listener.tap_io(|socket| {
        let _ = socket.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve the proxy") });
    port
}

/// A proxy that changes nothing and records every request; returns its port and log.
pub async fn serve(client: kube::Client) -> (u16, RequestLog) {
    let log = RequestLog::default();
    let app = axum::Router::new().fallback(pass_through).with_state(PassThrough { client, log: log.clone() });
    (serve_on_loopback(app).await, log)
}

/// Writes a kubeconfig (context `proxy`) whose server is the proxy on `port`.
pub fn write_kubeconfig(path: &std::path::Path, port: u16) {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: anyone\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: anyone\ncurrent-context: proxy\n"
    );
    std::fs::write(path, yaml).expect("write the proxy's kubeconfig");
}
