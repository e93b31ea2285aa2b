//! The upstream client of one worker: a small pool of HTTP/1.1 and HTTP/2 connections (HTTP/2
//! when the upstream offers it by ALPN), opened by the TLS-verifying egress connector. It does
//! what the request path needs and no more — no redirects, no retries beyond resending a
//! request that a reused keep-alive connection never took — so a request costs a lock-free
//! (per worker) lookup in a short list instead of a general-purpose pool.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{BoxError, RequestBody};
use crate::egress::EgressConnector;

/// Idle connections kept per upstream at most.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a connection sends requests.
enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }
}

struct Pooled {
    sender: Sender,
    since: Instant,
}

/// The connections to one origin.
struct Origin {
    scheme: Scheme,
    authority: Authority,
    conns: Vec<Pooled>,
}

/// One worker's upstream connections.
pub struct Upstream {
    connector: HttpsConnector<EgressConnector>,
    origins: Mutex<Vec<Origin>>,
}

impl Upstream {
    /// A pool whose connections are verified with `tls`.
    pub fn new(tls: rustls::ClientConfig) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(EgressConnector::from_env(http));
        Upstream {
            connector,
            origins: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (an absolute URI) and returns the answer's head with its body streaming.
    /// `fresh` skips the idle connections (for a resend after a stale one failed).
    pub async fn request(
        &self,
        req: Request<RequestBody>,
        fresh: bool,
    ) -> Result<Response<Incoming>, Failure> {
        let (scheme, authority) = match (req.uri().scheme(), req.uri().authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => return Err(Failure::other("the upstream URI is not absolute")),
        };
        let mut req = req;
        let pooled = if fresh {
            None
        } else {
            self.checkout(&scheme, &authority)
        };
        if let Some(sender) = pooled {
            match self.send(sender, req, &scheme, &authority).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::Failed(e)) => {
                    return Err(Failure {
                        stale: is_stale(&e),
                        error: e,
                    });
                }
                // A reused keep-alive connection closed before it took the request: resend it
                // once on a new connection. A request it took is never sent twice here.
                Err(SendError::Unsent(back)) => req = *back,
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is rare next to reuse, and its future is large;
        // inline, every request's future would carry (and move) it.
        let sender = Box::pin(self.connect(&scheme, &authority))
            .await
            .map_err(Failure::from)?;
        match self.send(sender, req, &scheme, &authority).await {
            Ok(resp) => Ok(resp),
            Err(SendError::Failed(e)) => Err(Failure::from(e)),
            Err(SendError::Unsent(_)) => {
                Err(Failure::other("the new upstream connection closed at once"))
            }
        }
    }

    /// A ready connection to the origin, if one is idle.
    fn checkout(&self, scheme: &Scheme, authority: &Authority) -> Option<Sender> {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        let origin = origins
            .iter_mut()
            .find(|o| o.authority == *authority && o.scheme == *scheme)?;
        let now = Instant::now();
        let stale = |c: &Pooled| {
            c.sender.is_closed()
                || (c.sender.is_ready() && now.duration_since(c.since) > IDLE_TIMEOUT)
        };
        origin.conns.retain(|c| !stale(c));
        let i = origin.conns.iter().position(|c| c.sender.is_ready())?;
        match &origin.conns[i].sender {
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::H1(_) => Some(origin.conns.swap_remove(i).sender),
        }
    }

    /// Puts a connection (back) in the pool; an HTTP/1.1 one becomes ready again when the
    /// answer it carries has been read.
    fn checkin(&self, scheme: &Scheme, authority: &Authority, sender: Sender) {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        let i = match origins
            .iter()
            .position(|o| o.authority == *authority && o.scheme == *scheme)
        {
            Some(i) => i,
            None => {
                origins.push(Origin {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    conns: Vec::new(),
                });
                origins.len() - 1
            }
        };
        let conns = &mut origins[i].conns;
        if conns.len() < MAX_IDLE_PER_ORIGIN {
            conns.push(Pooled {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, scheme: &Scheme, authority: &Authority) -> Result<Sender, BoxError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(uri).await?;
        let sender = if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            self.checkin(scheme, authority, Sender::H2(sender.clone()));
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::Builder::new().handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Sender::H1(sender)
        };
        Ok(sender)
    }

    /// Sends on `sender`, giving back a request the connection never took.
    async fn send(
        &self,
        sender: Sender,
        mut req: Request<RequestBody>,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Response<Incoming>, SendError> {
        match sender {
            Sender::H2(mut s) => {
                let _ = std::future::poll_fn(|cx| s.poll_ready(cx)).await;
                match s.try_send_request(req).await {
                    Ok(resp) => Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(req) => Err(SendError::Unsent(Box::new(req))),
                        None => Err(SendError::Failed(e.into_error().into())),
                    },
                }
            }
            Sender::H1(mut s) => {
                // HTTP/1.1 wants the origin form and a Host header.
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    req.headers_mut().insert(header::HOST, host);
                }
                if std::future::poll_fn(|cx| s.poll_ready(cx)).await.is_err() {
                    return Err(SendError::Unsent(Box::new(restore_uri(
                        req, scheme, authority,
                    ))));
                }
                match s.try_send_request(req).await {
                    Ok(resp) => {
                        self.checkin(scheme, authority, Sender::H1(s));
                        Ok(resp)
                    }
                    Err(mut e) => match e.take_message() {
                        Some(req) => Err(SendError::Unsent(Box::new(restore_uri(
                            req, scheme, authority,
                        )))),
                        None => Err(SendError::Failed(e.into_error().into())),
                    },
                }
            }
        }
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: BoxError,
    /// A reused keep-alive connection was closed by the upstream with no answer at all: the
    /// request may well not have been seen, and an idempotent one can be sent again.
    pub stale: bool,
}

impl Failure {
    fn other(message: &'static str) -> Failure {
        Failure::from(BoxError::from(message))
    }
}

impl From<BoxError> for Failure {
    fn from(error: BoxError) -> Failure {
        Failure {
            error,
            stale: false,
        }
    }
}

/// The upstream closed or reset the connection before any answer.
fn is_stale(e: &BoxError) -> bool {
    let Some(hyper) = e.downcast_ref::<hyper::Error>() else {
        return false;
    };
    if hyper.is_incomplete_message() || hyper.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(hyper);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = err.source();
    }
    false
}

/// Why a send did not give an answer.
enum SendError {
    /// The connection never took the request; here it is back.
    Unsent(Box<Request<RequestBody>>),
    /// The request was (maybe partly) sent and failed.
    Failed(BoxError),
}

fn restore_uri(
    mut req: Request<RequestBody>,
    scheme: &Scheme,
    authority: &Authority,
) -> Request<RequestBody> {
    if let Some(pq) = req.uri().path_and_query().cloned() {
        if let Ok(uri) = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(pq)
            .build()
        {
            *req.uri_mut() = uri;
        }
    }
    req.headers_mut().remove(header::HOST);
    req
}
