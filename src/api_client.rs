//! The operator's API client: kube's middleware (base URI, auth, headers,
//! retries) over one multiplexed HTTP/2 connection per client.
//!
//! kube's stock client offers HTTP/1.1 only, so every request in flight holds
//! a TLS connection of its own: 67 with 1000 sessions, 598–1007 after a
//! restart before concurrency was bounded. The API server speaks HTTP/2 (ALPN
//! `h2`), as client-go uses it: then all requests and watches share one
//! connection, and PINGs find a dead one, as client-go's health check does.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use kube::{Client, Config};
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

/// A PING after this long without a frame from the server (client-go: 30 s).
const PING_AFTER: Duration = Duration::from_secs(10);
/// No answer to a PING in this long: the connection is dead (client-go: 15 s).
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for `config` that prefers HTTP/2. A kubeconfig that needs what only
/// kube's own stack does (a proxy, an exec plugin that may hand out expiring
/// client certificates) gets kube's stack, over HTTP/1.1.
pub fn client(mut config: Config) -> Result<Client, kube::Error> {
    let kube_stack = config.proxy_url.is_some() || config.auth_info.exec.is_some();
    // Over HTTP/1.1 the read timeout must count from each request: otherwise a
    // pooled connection's idle time counts against it, and the first requests
    // after a quiet spell of about the timeout failed at once (`SendRequest`,
    // `TimedOut`) and waited a backoff. Over HTTP/2 PINGs keep an idle
    // connection reading, and a silent one must still time out while we write.
    config.reset_reader_on_write = kube_stack || config.cluster_url.scheme_str() != Some("https");
    if kube_stack {
        return Client::try_from(config);
    }
    let connector = connector(&config)?;
    let connection = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_AFTER)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build::<_, Body>(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(connection);
    Ok(ClientBuilder::new(service, config.default_namespace.clone()).build())
}

/// TCP with Nagle off, TLS offering `h2` and `http/1.1`, and the config's timeouts.
fn connector(config: &Config) -> Result<TimeoutConnector<HttpsConnector<HttpConnector>>, kube::Error> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // HTTP/2 sends a write's HEADERS and DATA frames in separate segments: with Nagle
    // on, DATA waited for the server's delayed ACK, 40 ms on every write.
    http.set_nodelay(true);
    // The builder offers `h2` and `http/1.1` by ALPN.
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let https = match &config.tls_server_name {
        Some(name) => https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            name.clone()
                .try_into()
                .map_err(|e| kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e)))?,
        )),
        None => https,
    };
    let mut connector = TimeoutConnector::new(https.enable_all_versions().wrap_connector(http));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    Ok(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback whose `/slow` answers after `delay`.
    async fn slow_server(delay: Duration) -> String {
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get(move || async move {
                tokio::time::sleep(delay).await;
                "done"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    /// Every connection has Nagle's algorithm off: over HTTP/2 a write's DATA frame
    /// otherwise waits for the server's delayed ACK of its HEADERS frame.
    #[tokio::test]
    async fn connections_are_opened_with_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let uri: http::Uri =
            format!("http://{}", listener.local_addr().expect("local address")).parse().expect("a URL");
        let mut connector = connector(&Config::new(uri.clone())).expect("a connector");
        let ready = tower::ServiceExt::ready(&mut connector).await.expect("ready");
        let stream = tower::Service::call(ready, uri).await.expect("a connection");
        let hyper_rustls::MaybeHttpsStream::Http(tcp) = stream.get_ref() else {
            panic!("a plain-http URL gave a TLS stream");
        };
        assert!(tcp.inner().nodelay().expect("read TCP_NODELAY"), "TCP_NODELAY is off");
    }

    /// Over HTTP/1.1 (plain http here) the read timeout bounds the wait for an
    /// answer, counted from the request: a connection that sat in the pool most of
    /// a timeout (the next burst after a quiet spell) must not fail its next request.
    #[tokio::test]
    async fn the_read_timeout_counts_from_the_request_not_from_the_pooled_connections_last_read() {
        let timeout = Duration::from_secs(2);
        let server = slow_server(Duration::from_millis(1000)).await;
        let mut config = Config::new(server.parse().expect("a URL"));
        config.read_timeout = Some(timeout);
        let client = client(config).expect("a client");
        let slow = || http::Request::get("/slow").body(Vec::new()).expect("a request");
        assert_eq!(client.request_text(slow()).await.expect("the first answer"), "done");
        // Idle in the pool for 1.5 s of the 2 s: the next answer takes 1 s more.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(client.request_text(slow()).await.expect("the answer after a quiet spell"), "done");
    }
}
