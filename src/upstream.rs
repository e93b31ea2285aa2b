//! The upstream client of one worker: a small pool of HTTP/1.1 and HTTP/2 connections (HTTP/2
//! when the upstream offers it by ALPN), opened by the TLS-verifying egress connector. It does
//! what the request path needs and no more — no redirects, no retries beyond resending a
//! request that a reused keep-alive connection never took — so a request costs a lock-free
//! (per worker) lookup in a short list instead of a general-purpose pool.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::body::{BoxError, RequestBody};
use crate::egress::EgressConnector;

mod h1;

#[cfg(test)]
pub(crate) use h1::request_head;
pub use h1::{RawBody, UpBody};

/// The fields a request is sent with besides its header map's.
pub struct Added<'a> {
    /// The client's fields as they came (HTTP/1.1), sent but for the private ones and the
    /// tenant header.
    pub raw: Option<&'a crate::rawhead::RawHeaders>,
    /// The tenant header's name: never forwarded.
    pub tenant_header: &'a http::HeaderName,
    /// `Authorization: Bearer ...`.
    pub bearer: &'a http::HeaderValue,
    /// `client-request-id`.
    pub request_id: &'a crate::proxy::RequestId,
}

impl Added<'_> {
    /// Puts the fields into `headers` (for HTTP/2, which sends the map): once, a request sent
    /// again after an unsent attempt has them already.
    fn materialize(&self, headers: &mut http::HeaderMap) {
        if headers.contains_key(http::header::AUTHORIZATION) {
            return;
        }
        if let Some(raw) = self.raw {
            for (n, v) in raw.forwarded(self.tenant_header.as_str().as_bytes()) {
                // The head's parser has checked both: a field these refuse cannot have come
                // through it.
                if let (Ok(name), Some(value)) = (http::HeaderName::from_bytes(n), raw.shared(v)) {
                    headers.append(name, value);
                }
            }
        }
        headers.insert(http::header::AUTHORIZATION, self.bearer.clone());
        headers.insert(
            crate::forward::CLIENT_REQUEST_ID,
            self.request_id.to_header_value(),
        );
    }
}

/// Idle connections kept per upstream at most.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a checkout drops the pool's closed and expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How a connection sends requests.
enum Sender {
    /// HTTP/1.1, driven by the request's own task (`h1`).
    H1(Box<h1::RawConn>),
    H2(http2::SendRequest<RequestBody>),
}

struct Pooled {
    sender: Sender,
    since: Instant,
}

impl Pooled {
    /// `since`: when the connection went idle, or (for an HTTP/1.1 connection back from an
    /// answer) when its request was sent. That is earlier, so the connection is let go
    /// sooner, never kept past the idle timeout; and it spares each answer a clock reading.
    fn new(sender: Sender, since: Instant) -> Pooled {
        Pooled { sender, since }
    }
}

/// An upstream's scheme and authority.
pub(crate) struct OriginKey {
    scheme: Scheme,
    authority: Authority,
}

impl OriginKey {
    /// Authorities compare in any case (`Authority`'s own `==`, a byte at a time); the same
    /// bytes, as a route's own authority always has, are told first at once.
    fn is(&self, scheme: &Scheme, authority: &Authority) -> bool {
        (self.authority.as_str() == authority.as_str() || self.authority == *authority)
            && self.scheme == *scheme
    }
}

/// The connections to one origin.
struct Origin {
    key: OriginKey,
    /// Idle HTTP/1.1 connections, the most recently used last.
    h1: Vec<Pooled>,
    /// HTTP/2 connections (each serves many requests at once). Kept apart from `h1`: looking
    /// for one among the HTTP/1.1 connections went over all of them on every request.
    h2: Vec<Pooled>,
    /// When closed and expired connections were last dropped.
    swept: Instant,
}

impl Origin {
    fn new(key: OriginKey) -> Origin {
        Origin {
            key,
            h1: Vec::new(),
            h2: Vec::new(),
            swept: Instant::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Idle request timers kept per worker at most.
const MAX_IDLE_TIMERS: usize = 1024;

/// A worker's request timers, reused. A new timer per request cost an insertion into the
/// runtime's timer wheel and a removal from it (about a thousand instructions by callgrind); a
/// timer still in the wheel that is reset to a later deadline only stores the new deadline,
/// and is moved when its old one comes. A timer is only ever used on the worker (the runtime)
/// that made it: each worker has its own `Upstream`.
#[derive(Default)]
struct Timers {
    idle: Mutex<Vec<Pin<Box<Sleep>>>>,
}

/// A request's deadline: a timer of the worker's, back to its idle ones when dropped. One that
/// sits idle past its deadline fires once, waking the task that last waited on it for nothing.
pub struct Deadline<'a> {
    timers: &'a Timers,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline<'_> {
    /// Ready once the deadline has passed.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut idle = lock(&self.timers.idle);
            if idle.len() < MAX_IDLE_TIMERS {
                idle.push(sleep);
            }
        }
    }
}

/// One worker's upstream connections.
pub struct Upstream {
    connector: HttpsConnector<EgressConnector>,
    /// Its pool's key in the thread's pools (see `POOLS`).
    id: u64,
    timers: Timers,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The idle connections of each `Upstream` used on this thread, by its id: a worker's
    /// requests and their answers' bodies all run on its thread, so its pool is the thread's
    /// own and taking or giving back a connection takes no lock and counts no reference (the
    /// `Mutex` and the `Arc`s a pool shared between threads needed were ten locked
    /// instructions per request). A connection stays on the thread that opened it; a body
    /// finished on another thread (none is, in the proxy) closes its connection.
    static POOLS: RefCell<Vec<(u64, Vec<Origin>)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on pool `id`'s origins on this thread (made when `make`); `None` when there is
/// none, or when the thread is ending.
fn with_origins<R>(id: u64, make: bool, f: impl FnOnce(&mut Vec<Origin>) -> R) -> Option<R> {
    POOLS
        .try_with(|pools| {
            let mut pools = pools.try_borrow_mut().ok()?;
            let i = match pools.iter().position(|(k, _)| *k == id) {
                Some(i) => i,
                None if make => {
                    pools.push((id, Vec::new()));
                    pools.len() - 1
                }
                None => return None,
            };
            Some(f(&mut pools[i].1))
        })
        .ok()
        .flatten()
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Its idle connections close (those on other threads' pools close with the thread).
        let gone = POOLS.try_with(|pools| {
            let mut pools = pools.try_borrow_mut().ok()?;
            let i = pools.iter().position(|(k, _)| *k == self.id)?;
            Some(pools.swap_remove(i))
        });
        drop(gone);
    }
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
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            timers: Timers::default(),
        }
    }

    /// A timer for a request's deadline, from this worker's reused ones.
    pub fn deadline(&self, at: Instant) -> Deadline<'_> {
        let sleep = match lock(&self.timers.idle).pop() {
            Some(mut sleep) => {
                sleep.as_mut().reset(at);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        Deadline {
            timers: &self.timers,
            sleep: Some(sleep),
        }
    }

    /// Sends `req` (origin-form) to `origin` (scheme, authority) and returns the answer's head
    /// with its body streaming. `fresh` skips the idle connections (for a resend after a stale
    /// one failed). `now` is the caller's reading of the clock, just taken (the pool's age
    /// checks use it).
    pub async fn request(
        &self,
        origin: (&Scheme, &Authority),
        req: Box<Request<RequestBody>>,
        added: &Added<'_>,
        fresh: bool,
        now: Instant,
    ) -> Result<Box<Response<UpBody>>, Failure> {
        let mut req = req;
        let (pooled, at) = self.checkout(origin, fresh, now);
        if let Some(sender) = pooled {
            match self.send(sender, req, added, origin, (at, now), true).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::Failed(e)) => {
                    return Err(Failure {
                        stale: is_stale(&e),
                        error: e,
                    });
                }
                Err(SendError::Raw(f)) => return Err(f),
                // A reused keep-alive connection closed before it took the request: resend it
                // once on a new connection. A request it took is never sent twice here.
                Err(SendError::Unsent(back)) => req = back,
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is rare next to reuse, and its future is large;
        // inline, every request's future would carry (and move) it.
        let sender = Box::pin(self.connect(origin, at))
            .await
            .map_err(Failure::from)?;
        match self
            .send(sender, req, added, origin, (at, now), false)
            .await
        {
            Ok(resp) => Ok(resp),
            Err(SendError::Failed(e)) => Err(Failure::from(e)),
            Err(SendError::Raw(f)) => Err(f),
            Err(SendError::Unsent(_)) => {
                Err(Failure::other("the new upstream connection closed at once"))
            }
        }
    }

    /// A ready connection to the origin, if one is idle (and not `fresh` asked), and where
    /// the origin is in this thread's pool (`None`: no pool here, connections are not kept).
    fn checkout(
        &self,
        (scheme, authority): (&Scheme, &Authority),
        fresh: bool,
        now: Instant,
    ) -> (Option<Sender>, Option<usize>) {
        with_origins(self.id, true, |origins| {
            let i = match origins.iter().position(|o| o.key.is(scheme, authority)) {
                Some(i) => i,
                None => {
                    origins.push(Origin::new(OriginKey {
                        scheme: scheme.clone(),
                        authority: authority.clone(),
                    }));
                    origins.len() - 1
                }
            };
            let origin = &mut origins[i];
            if fresh {
                return (None, Some(i));
            }
            // Sweeping the whole pool on every request cost more than the rest of the
            // checkout; once a second is enough (a connection taken is checked on its own
            // below).
            // (Instants compared, not their difference: that costs a division.)
            if now >= origin.swept + SWEEP_EVERY {
                origin.swept = now;
                origin.h2.retain(|c| match &c.sender {
                    Sender::H2(s) => !s.is_closed(),
                    Sender::H1(_) => false,
                });
                origin.h1.retain(|c| now <= c.since + IDLE_TIMEOUT);
            }
            let h2 = origin.h2.iter().find_map(|c| match &c.sender {
                Sender::H2(s) if s.is_ready() => Some(s.clone()),
                _ => None,
            });
            if let Some(s) = h2 {
                return (Some(Sender::H2(s)), Some(i));
            }
            // The most recently used first; one the upstream has closed meanwhile is dropped.
            while let Some(pooled) = origin.h1.pop() {
                if let Sender::H1(mut conn) = pooled.sender {
                    if now <= pooled.since + IDLE_TIMEOUT && conn.idle_usable() {
                        return (Some(Sender::H1(conn)), Some(i));
                    }
                }
            }
            (None, Some(i))
        })
        .unwrap_or((None, None))
    }

    async fn connect(
        &self,
        (scheme, authority): (&Scheme, &Authority),
        at: Option<usize>,
    ) -> Result<Sender, BoxError> {
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
            checkin(
                self.id,
                at,
                Pooled::new(Sender::H2(sender.clone()), Instant::now()),
            );
            Sender::H2(sender)
        } else {
            Sender::H1(Box::new(h1::RawConn::new(io)))
        };
        Ok(sender)
    }

    /// Sends on `sender`, giving back a request the connection never took. `at`: the origin's
    /// place in the pool; `now`: the caller's clock reading. `reused`: the connection came
    /// from the pool.
    async fn send(
        &self,
        sender: Sender,
        mut req: Box<Request<RequestBody>>,
        added: &Added<'_>,
        (scheme, authority): (&Scheme, &Authority),
        (at, now): (Option<usize>, Instant),
        reused: bool,
    ) -> Result<Box<Response<UpBody>>, SendError> {
        match sender {
            Sender::H2(mut s) => {
                // HTTP/2 names the scheme and authority in the request.
                let pq = req.uri().path_and_query().cloned();
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(pq.unwrap_or_else(|| PathAndQuery::from_static("/")))
                    .build()
                    .map_err(|e| SendError::Failed(e.into()))?;
                *req.uri_mut() = uri;
                added.materialize(req.headers_mut());
                let _ = std::future::poll_fn(|cx| s.poll_ready(cx)).await;
                match s.try_send_request(*req).await {
                    Ok(resp) => Ok(Box::new(resp.map(UpBody::H2))),
                    Err(mut e) => match e.take_message() {
                        Some(req) => Err(SendError::Unsent(Box::new(req))),
                        None => Err(SendError::Failed(e.into_error().into())),
                    },
                }
            }
            Sender::H1(conn) => {
                let home = h1::Home {
                    upstream: self.id,
                    origin: at,
                    sent: now,
                };
                match h1::send(conn, req, added, authority, home, reused).await {
                    h1::Outcome::Answer(resp) => Ok(resp),
                    h1::Outcome::Unsent(req) => Err(SendError::Unsent(req)),
                    h1::Outcome::Failed(f) => Err(SendError::Raw(f)),
                }
            }
        }
    }
}

/// Puts a connection in pool `upstream`'s origin `at` on this thread (unless the pool is full,
/// or not here: then the connection closes).
fn checkin(upstream: u64, at: Option<usize>, pooled: Pooled) {
    let Some(i) = at else { return };
    let rejected = with_origins(upstream, false, |origins| {
        let origin = origins.get_mut(i)?;
        if origin.h1.len() + origin.h2.len() >= MAX_IDLE_PER_ORIGIN {
            return Some(pooled);
        }
        match pooled.sender {
            Sender::H1(_) => origin.h1.push(pooled),
            Sender::H2(_) => origin.h2.push(pooled),
        }
        None
    });
    // Closed outside the pool's borrow.
    drop(rejected);
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
    /// The same, on an HTTP/1.1 connection, which knows whether it was stale.
    Raw(Failure),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Upstream::new(tls)
    }

    #[test]
    fn a_pool_is_its_threads_own_and_goes_with_its_upstream() {
        let up = upstream();
        let (scheme, authority) = (Scheme::HTTP, Authority::from_static("127.0.0.1:9"));
        let (idle, at) = up.checkout((&scheme, &authority), false, Instant::now());
        assert!(idle.is_none());
        assert_eq!(at, Some(0));
        let id = up.id;
        assert_eq!(with_origins(id, false, |o| o.len()), Some(1));
        // Another thread has no pool of this upstream's: a connection given back there closes.
        std::thread::spawn(move || assert_eq!(with_origins(id, false, |o| o.len()), None))
            .join()
            .unwrap();
        drop(up);
        assert_eq!(
            with_origins(id, false, |o| o.len()),
            None,
            "dropped with its upstream"
        );
    }

    async fn elapsed(d: &mut Deadline<'_>) {
        std::future::poll_fn(|cx| d.poll_elapsed(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_reuse_timers_and_each_fires_at_its_own_time() {
        let up = upstream();
        let t0 = Instant::now();
        let mut d = up.deadline(t0 + Duration::from_secs(5));
        elapsed(&mut d).await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(5));
        drop(d);
        assert_eq!(lock(&up.timers.idle).len(), 1, "back to the idle ones");

        // Reused for a later deadline (the deadline only stored) and for an earlier one than
        // it had before (moved in the wheel): each fires at its own time, not before.
        for secs in [30, 2] {
            let start = Instant::now();
            let mut d = up.deadline(start + Duration::from_secs(secs));
            assert_eq!(lock(&up.timers.idle).len(), 0, "the idle one is taken");
            let early = tokio::time::timeout(Duration::from_secs(secs - 1), elapsed(&mut d)).await;
            assert!(early.is_err(), "fired before {secs} s");
            elapsed(&mut d).await;
            assert_eq!(Instant::now() - start, Duration::from_secs(secs));
        }

        // One whose request finished first is reused before it ever fires.
        let start = Instant::now();
        drop(up.deadline(start + Duration::from_secs(60)));
        let mut d = up.deadline(start + Duration::from_secs(90));
        elapsed(&mut d).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(90));
    }

    /// An HTTP/1.1 connection's idle time counts from when its request was sent: an answer
    /// that took 50 s leaves it 10 s of the 60 it may idle, not 60 from the answer.
    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_send() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut first = true;
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        if first && n == 1 {
                            tokio::time::sleep(Duration::from_secs(50)).await;
                        }
                        first = false;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        s.write_all(answer).await.unwrap();
                    }
                });
            }
        });
        let up = upstream();
        let tenant = http::HeaderName::from_static("x-tenant-id");
        let bearer = http::HeaderValue::from_static("Bearer t");
        let id = crate::proxy::request_id(None);
        let added = Added {
            raw: None,
            tenant_header: &tenant,
            bearer: &bearer,
            request_id: &id,
        };
        let get = |uri: &str| {
            Box::new(
                Request::get(format!("http://{authority}{uri}"))
                    .body(RequestBody::Full(None))
                    .unwrap(),
            )
        };
        let send = async |uri: &str| {
            let resp = up
                .request(
                    (&Scheme::HTTP, &authority),
                    get(uri),
                    &added,
                    false,
                    Instant::now(),
                )
                .await
                .unwrap();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            assert_eq!(&body.to_bytes()[..], b"ok");
        };
        // A quick exchange first: the connection is reused by one soon after.
        send("/a").await;
        send("/b").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Idle past the timeout: the next request opens the server's second connection, whose
        // first answer takes 50 s.
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        let sent = Instant::now();
        send("/slow").await;
        assert_eq!(Instant::now() - sent, Duration::from_secs(50));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // 11 s after the answer, 61 s after the send: not reused.
        tokio::time::sleep(Duration::from_secs(11)).await;
        send("/c").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_timers_are_capped() {
        let up = upstream();
        let at = Instant::now() + Duration::from_secs(60);
        let many: Vec<_> = (0..MAX_IDLE_TIMERS + 10).map(|_| up.deadline(at)).collect();
        drop(many);
        assert_eq!(lock(&up.timers.idle).len(), MAX_IDLE_TIMERS);
    }
}
