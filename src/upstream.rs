//! The upstream client: hyper-util's pooled `Client` (HTTP/1.1 keep-alive, and HTTP/2 when the
//! upstream offers it by ALPN) over the egress connector, which verifies TLS with the proxy's
//! roots and tunnels through `HTTPS_PROXY` where the environment says so.
//!
//! It never follows redirects (the legacy client has no redirect support at all), and it
//! resends a request only when a pooled connection closed before taking it (hyper-util's
//! `retry_canceled_requests`, on by default): a request an upstream may have seen is never
//! sent twice.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::egress::EgressConnector;

/// An idle pooled connection is closed after this long. Shorter than the usual server-side
/// keep-alive (Azure front ends keep 4 minutes), so the upstream seldom closes one under a
/// request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream host at most.
pub const MAX_IDLE_PER_HOST: usize = 256;
/// Time allowed to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pooled upstream client, shared by every request (a clone is another handle on it). With
/// `server.runtime = "per-core"` each serving thread has one of its own (`another`).
#[derive(Clone)]
pub struct Client(std::sync::Arc<Inner>);

struct Inner {
    pooled: Pooled<HttpsConnector<EgressConnector>, Body>,
    /// For `another`.
    tls: rustls::ClientConfig,
}

impl Client {
    /// A client whose connections are verified with `tls`.
    pub fn new(tls: rustls::ClientConfig) -> Client {
        Client::keeping(tls, MAX_IDLE_PER_HOST)
    }

    /// A client whose pool keeps at most `max_idle` idle connections per host.
    fn keeping(tls: rustls::ClientConfig, max_idle: usize) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(EgressConnector::from_env(http));
        let client = Pooled::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        Client(std::sync::Arc::new(Inner {
            pooled: client,
            tls,
        }))
    }

    /// A client with the same settings and a pool of its own, for one of `threads` per-core
    /// threads. Its pool keeps its share of `MAX_IDLE_PER_HOST` idle (at least one), so that
    /// all the threads together keep no more than one shared client would.
    pub fn another(&self, threads: usize) -> Client {
        Client::keeping(
            self.0.tls.clone(),
            (MAX_IDLE_PER_HOST / threads.max(1)).max(1),
        )
    }

    /// Sends `req` (its URI absolute: scheme, authority, path) and returns the response head
    /// with its body streaming.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.0.pooled.request(req).await
    }
}
