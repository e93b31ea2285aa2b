//! The client side of the proxy over HTTP/1.x: one task per connection parses each request
//! head (`h1parse`), frames the body, runs the request path and writes the answer, with no
//! other task in between. HTTP/2 with prior knowledge is handed to hyper.
//!
//! Written here rather than taken from hyper for two reasons: a request that carries both
//! `Content-Length` and `Transfer-Encoding` (a smuggling shape) must be refused with a 400,
//! which hyper's server cannot do (it drops the `Content-Length` before the service sees the
//! request), and the per-request cost of the proxy is dominated by HTTP machinery.
//! Refusals of malformed requests are Defender-shaped like every other error.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Worker;
use crate::body::{BoxError, ClientBody, ResponseBody};
use crate::error::ProxyError;
use crate::h1parse;
use crate::rawhead::{self, Known, RawHeaders};

/// A request head (request line and headers) may take this many bytes...
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// ...and this many headers.
pub const MAX_HEADERS: usize = 100;
/// An idle connection, or one sending a head, is closed after this long without a whole head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body the proxy did not read (it answered first) is read and discarded before the
/// next request when its remaining length is known and at most this...
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// ...within this time; otherwise the connection is closed.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);
/// A chunk-size line (with extensions) or a trailer section may take this many bytes.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An answer-head buffer larger than this (after a very large head) is not kept.
const MAX_KEPT_HEAD: usize = 8 * 1024;

/// Serves one accepted connection until it closes or `stop` asks to finish (after the request
/// in progress). The worker aborts the task when the grace period is over.
pub async fn serve(worker: Arc<Worker>, stream: TcpStream, stop: CancellationToken) {
    // A token of the connection's own: waiting on it between requests touches no lock that
    // other connections (or workers) share.
    let stop = stop.child_token();
    let stream = Arc::new(stream);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Where answer heads are written, reused from answer to answer.
    let mut out = Vec::with_capacity(512);
    let mut first = true;
    let mut waits = Waits::new(&stop, &worker.state.stopping);
    // The box the fields of each request's head are read into, reused.
    let mut spare = None;
    // The connection's reference to the current config: checked for a reload with one plain
    // load per request; cloning the shared `Arc` per request made every core write its count.
    let mut config = arc_swap::Cache::new(&worker.state.runtime);
    loop {
        let parsed = match read_head(&stream, &mut buf, &mut waits, first, &mut spare).await {
            Ok(Head::Request(parsed)) => parsed,
            Ok(Head::Http2) => {
                if let Ok(stream) = Arc::try_unwrap(stream) {
                    serve_h2(worker, stream, buf.freeze(), stop).await;
                }
                return;
            }
            Ok(Head::Closed) | Err(HeadError::Io) => return,
            Err(HeadError::Refused(e)) => {
                let (resp, id) = refusal(e);
                if write_response(&stream, resp, &ResponseMode::close(), Some(&id), &mut out)
                    .await
                    .is_ok()
                {
                    linger(&stream).await;
                }
                return;
            }
        };
        first = false;
        let Parsed {
            request,
            raw,
            keep_alive,
            head_only,
            http10,
            reader,
        } = parsed;
        let (mut resp, request_id) = {
            let handled = crate::catch_panic(&worker, config.load(), request, raw.as_deref());
            waits.keep(std::pin::pin!(handled)).await
        };
        spare = raw.map(|mut raw| {
            raw.release();
            raw
        });
        let mut keep_alive = keep_alive && !worker.state.stopping.load(Relaxed);
        // The proxy's own say (`Connection: close` when a body was left unread); never sent as
        // it is, the answer's framing decides the header.
        if resp
            .headers_mut()
            .remove(header::CONNECTION)
            .is_some_and(|v| has_token(v.as_bytes(), b"close"))
        {
            keep_alive = false;
        }
        let mode = ResponseMode {
            keep_alive,
            head_only,
            http10,
        };
        let keep_alive =
            match write_response(&stream, resp, &mode, request_id.as_ref(), &mut out).await {
                Ok(k) => k,
                Err(_) => return,
            };
        let unread = reader.as_ref().is_some_and(|r| {
            r.lock()
                .map_or(true, |r| !matches!(r.framing, Framing::Done))
        });
        if !keep_alive {
            if unread {
                linger(&stream).await;
            }
            return;
        }
        buf = match reader {
            None => buf,
            Some(reader) => match take_back(reader).await {
                Some(rest) => rest,
                None => {
                    linger(&stream).await;
                    return;
                }
            },
        };
    }
}

/// The answer to a request the proxy could not parse, with a request ID of its own.
fn refusal(e: ProxyError) -> (Response<ResponseBody>, crate::proxy::RequestId) {
    let id = crate::proxy::request_id(None);
    (e.into_response(id.as_str()), id)
}

/// Before closing a connection whose client may still be sending: stop writing and read
/// what comes for a moment, so that closing with unread input (which resets the connection)
/// does not destroy the answer before the client has read it.
async fn linger(stream: &TcpStream) {
    let _ = socket_shutdown_write(stream);
    let mut left: usize = 1024 * 1024;
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while left > 0 {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

fn socket_shutdown_write(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// After the answer: the read side back from the request body, its unread rest (when small)
/// read and discarded; `None` when the connection cannot take another request.
async fn take_back(reader: Arc<Mutex<Reader>>) -> Option<BytesMut> {
    let reader = Arc::try_unwrap(reader).ok()?.into_inner().ok()?;
    if reader.failed {
        return None;
    }
    match reader.framing {
        Framing::Done => Some(reader.buf),
        Framing::Length(n) if n <= DRAIN_MAX_BYTES => {
            let shared = Arc::new(Mutex::new(reader));
            let mut body = H1Body {
                shared: shared.clone(),
            };
            let drained = tokio::time::timeout(DRAIN_MAX_TIME, async {
                while let Some(frame) = body.frame().await {
                    frame.ok()?;
                }
                Some(())
            })
            .await;
            drop(body);
            drained.ok().flatten()?;
            let reader = Arc::try_unwrap(shared).ok()?.into_inner().ok()?;
            Some(reader.buf)
        }
        _ => None,
    }
}

/// HTTP/2 with prior knowledge (h2c), served by hyper; `read` holds what was read so far.
async fn serve_h2(worker: Arc<Worker>, stream: TcpStream, read: Bytes, stop: CancellationToken) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let worker = worker.clone();
        async move {
            let req = Box::new(req.map(ClientBody::Hyper));
            let rt = worker.runtime();
            let (mut resp, id) = crate::catch_panic(&worker, &rt, req, None).await;
            if let Some(id) = id {
                crate::proxy::set_request_id(&mut resp, &id);
            }
            let (mut parts, mut body) = resp.into_parts();
            // hyper writes the header map only.
            crate::rawhead::materialize(&mut parts.headers, body.take_fields());
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, body))
        }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.max_header_list_size(MAX_HEAD_BYTES as u32);
    let io = hyper_util::rt::TokioIo::new(Rewind {
        prefix: read,
        inner: stream,
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A stream whose first bytes were already read.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[allow(clippy::large_enum_variant)] // one per request, moved once; boxing would cost an allocation
enum Head {
    Request(Parsed),
    Http2,
    Closed,
}

enum HeadError {
    Io,
    Refused(ProxyError),
}

struct Parsed {
    /// Boxed: it goes through several layers on its way in, and was copied at each.
    request: Box<Request<ClientBody>>,
    /// The request's fields as they came (its header map is then empty).
    raw: Option<Box<RawHeaders>>,
    keep_alive: bool,
    head_only: bool,
    http10: bool,
    reader: Option<Arc<Mutex<Reader>>>,
}

/// What a connection waits on besides its socket, made once for the connection: waiting
/// for the next head arms no new timer and registers no new waiter (which cost more than
/// parsing the head).
struct Waits<'a> {
    /// When the head being read must be whole.
    deadline: tokio::time::Instant,
    /// Fires at or before `deadline`; moved on only when it fires early.
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The timer was polled (so this task's waker is on it) and not moved since: until it
    /// fires, it is checked with a plain load, not polled (a poll registers the waker again,
    /// two locked instructions).
    armed: bool,
    /// Wakes the connection's task when the proxy stops; polled once, to register it.
    stopped: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    stop_registered: bool,
    /// Set before the stop token is cancelled: what an idle wait checks on each wake-up.
    /// (Polling `stopped` on every wait took its lock and the token's, four locked
    /// instructions per request.)
    stopping: &'a std::sync::atomic::AtomicBool,
}

impl Waits<'_> {
    fn new<'a>(stop: &CancellationToken, stopping: &'a std::sync::atomic::AtomicBool) -> Waits<'a> {
        let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
        Waits {
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: false,
            stopped: Box::pin(stop.clone().cancelled_owned()),
            stop_registered: false,
            stopping,
        }
    }

    /// Whether the timer has fired; else its waker is this task's.
    fn fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed && !self.sleep.is_elapsed() {
            return false;
        }
        self.armed = self.sleep.as_mut().poll(cx).is_pending();
        !self.armed
    }

    /// Moves the timer to `at`.
    fn reset(&mut self, at: tokio::time::Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = false;
    }

    /// Polls a request, keeping its upstream deadline on the connection's timer (see
    /// `crate::deadline`).
    async fn keep<T>(&mut self, mut request: Pin<&mut impl Future<Output = T>>) -> T {
        let mut expired = false;
        std::future::poll_fn(|cx| {
            loop {
                let (r, wanted) = crate::deadline::poll_kept(expired, || request.as_mut().poll(cx));
                if r.is_ready() {
                    return r;
                }
                expired = false;
                let Some(at) = wanted else {
                    return Poll::Pending;
                };
                // The timer is never moved to a later time here: it fires first at the head's
                // deadline (30 s after the wait for this request began) and is moved on then.
                if self.sleep.deadline() > at {
                    self.reset(at);
                }
                loop {
                    if !self.fired(cx) {
                        return Poll::Pending;
                    }
                    if tokio::time::Instant::now() >= at {
                        break;
                    }
                    self.reset(at);
                }
                expired = true;
            }
        })
        .await
    }
}

/// Reads until a whole head is buffered, then parses it.
async fn read_head(
    stream: &Arc<TcpStream>,
    buf: &mut BytesMut,
    waits: &mut Waits<'_>,
    first: bool,
    spare: &mut Option<Box<RawHeaders>>,
) -> Result<Head, HeadError> {
    waits.deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    if waits.sleep.deadline() > waits.deadline {
        // Kept for a request's upstream deadline past this one (see `Waits::keep`).
        waits.reset(waits.deadline);
    }
    loop {
        if !buf.is_empty() {
            if first {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Ok(Head::Http2);
                    }
                    // Part of the preface so far: read on.
                    if !read_more(stream, buf, waits, false).await? {
                        return Ok(Head::Closed);
                    }
                    continue;
                }
            }
            if let Some(parsed) = parse_head(stream, buf, spare)? {
                return Ok(Head::Request(parsed));
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(HeadError::Refused(ProxyError::HeadersTooLarge));
            }
        }
        let idle = buf.is_empty();
        if !read_more(stream, buf, waits, idle).await? {
            return Ok(Head::Closed);
        }
    }
}

/// Reads more into `buf`; false when the connection closed cleanly between requests (or the
/// proxy is stopping and the connection is idle).
async fn read_more(
    stream: &TcpStream,
    buf: &mut BytesMut,
    waits: &mut Waits<'_>,
    idle: bool,
) -> Result<bool, HeadError> {
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
        match try_read_buf(stream, buf) {
            Ok(0) if idle => return Ok(false),
            Ok(0) => return Err(HeadError::Io),
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(HeadError::Io),
        }
        match std::future::poll_fn(|cx| waits.poll(stream, idle, cx)).await {
            Woke::Readable(r) => r.map_err(|_| HeadError::Io)?,
            Woke::Timer => {
                if tokio::time::Instant::now() >= waits.deadline {
                    return Err(HeadError::Io);
                }
                waits.reset(waits.deadline);
            }
            Woke::Stopped => return Ok(false),
        }
    }
}

/// What ended a wait for more of a head.
enum Woke {
    Readable(io::Result<()>),
    Timer,
    Stopped,
}

impl Waits<'_> {
    /// The socket first, then the timer, then (when `idle`) the stop: no random draw per
    /// wait. The socket's readiness is polled, not awaited as `readable()`: that future joins
    /// and leaves the socket's list of waiters, under its lock, on every wait, where
    /// `poll_read_ready` keeps the one waker of the one task that reads the socket.
    fn poll(&mut self, stream: &TcpStream, idle: bool, cx: &mut Context<'_>) -> Poll<Woke> {
        if let Poll::Ready(r) = stream.poll_read_ready(cx) {
            return Poll::Ready(Woke::Readable(r));
        }
        if self.fired(cx) {
            return Poll::Ready(Woke::Timer);
        }
        if idle {
            if self.stopping.load(Relaxed) {
                return Poll::Ready(Woke::Stopped);
            }
            // Its waker stays registered until the stop: it is this task's, and the task
            // is the connection's for its whole life.
            if !self.stop_registered {
                if self.stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Stopped);
                }
                self.stop_registered = true;
            }
        }
        Poll::Pending
    }
}

/// Reads what the socket has into `buf`, waiting (registering `cx`) while it has nothing.
pub(crate) fn poll_read_buf(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match try_read_buf(stream, buf) {
            // The readiness is cleared: the next poll registers `cx`.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
    }
}

/// Reads what the socket has into `buf`, without waiting. As tokio's own `AsyncRead` does, a
/// read that left room in the buffer counts as having drained the socket, and the socket is
/// marked not ready: the next wait then goes to the event loop instead of to a `recv` that
/// would find nothing (one system call per request on a keep-alive connection).
fn try_read_buf(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let n = stream.try_read_buf(buf)?;
    if n > 0 && n < room {
        // A closure that "would block" clears the readiness tokio saw before it, and only
        // that: data arriving since is a new event, which the event loop has yet to report.
        let _ = stream.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    Ok(n)
}

/// Parses the head at the start of `buf`, if whole; takes it (and nothing more) out of `buf`.
fn parse_head(
    stream: &Arc<TcpStream>,
    buf: &mut BytesMut,
    spare: &mut Option<Box<RawHeaders>>,
) -> Result<Option<Parsed>, HeadError> {
    let bad = |why| Err(HeadError::Refused(ProxyError::BadRequest(why)));
    let mut few = [(0, 0, 0, 0); FEW_HEADERS];
    let (line, spans) = match h1parse::parse_request(buf, &mut few, MAX_HEADERS) {
        Ok(Some((line, _))) if line.len > MAX_HEAD_BYTES => {
            return Err(HeadError::Refused(ProxyError::HeadersTooLarge));
        }
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(h1parse::Invalid::TooManyFields) => {
            return Err(HeadError::Refused(ProxyError::HeadersTooLarge));
        }
        Err(h1parse::Invalid::Syntax) => {
            return bad("the request line or a header is not valid HTTP/1.1");
        }
    };
    let (len, target) = (line.len, line.target);
    let Ok(method) = Method::from_bytes(&buf[line.method.0..][..line.method.1]) else {
        return bad("the method is not valid");
    };
    let http10 = line.version == 0;
    let head = buf.split_to(len).freeze();
    let uri = match Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1)) {
        Ok(u) => u,
        Err(_) => return bad("the request target is not a valid URI"),
    };
    // The fields as they came when they fit (the usual case), else a header map.
    let (raw, fields) = match RawHeaders::parse_into(spare.take(), head.clone(), &spans) {
        Ok(Some((raw, fields))) => (Some(raw), fields),
        Ok(None) => match header_fields(&head, &spans) {
            Ok(f) => (None, f),
            Err(why) => return bad(why),
        },
        Err(why) => return bad(why),
    };
    let Fields {
        headers,
        length,
        chunked,
        close,
        keep_alive,
        expect_continue,
    } = fields;
    let keep_alive = (keep_alive || !http10) && !close;
    let framing = match (chunked, length) {
        (Some(_), Some(_)) => {
            return bad("the request has both Content-Length and Transfer-Encoding");
        }
        (Some(_), None) if http10 => {
            return bad("HTTP/1.0 has no Transfer-Encoding");
        }
        (Some(false), None) => return bad("the Transfer-Encoding is not chunked"),
        (Some(true), None) => Framing::Chunked(Chunk::Size),
        (None, Some(n)) if n > 0 => Framing::Length(n),
        (None, _) => Framing::Done,
    };
    let (body, reader) = if matches!(framing, Framing::Done) {
        (ClientBody::Empty, None)
    } else {
        let reader = Arc::new(Mutex::new(Reader {
            stream: stream.clone(),
            buf: std::mem::take(buf),
            framing,
            continue_pending: expect_continue && !http10,
            failed: false,
        }));
        (
            ClientBody::H1(H1Body {
                shared: reader.clone(),
            }),
            Some(reader),
        )
    };
    let head_only = method == Method::HEAD;
    let mut request = Box::new(Request::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // (Only a head parsed into a map has one: the request's own empty map is kept, as
    // dropping one cost about 60 instructions.)
    if let Some(headers) = headers {
        *request.headers_mut() = headers;
    }
    Ok(Some(Parsed {
        request,
        raw,
        keep_alive,
        head_only,
        http10,
        reader,
    }))
}

/// Where one header's name and value lie in a head: (name at, name length, value at, value
/// length).
pub(crate) type Span = (usize, usize, usize, usize);

/// Spans kept on the stack for this many headers (most heads have fewer), else on the heap:
/// zeroing room for the most headers allowed cost more than the parsing.
pub(crate) const FEW_HEADERS: usize = 16;

/// Room on the caller's stack for the spans of a head with few headers: filled in place, not
/// returned (a returned array of them was copied, 512 bytes a head).
pub(crate) type FewSpans = [Span; FEW_HEADERS];

/// The spans of a head's headers.
pub(crate) enum Spans<'a> {
    Few(&'a [Span]),
    Many(Vec<Span>),
}

impl std::ops::Deref for Spans<'_> {
    type Target = [Span];
    fn deref(&self) -> &[Span] {
        match self {
            Spans::Few(s) => s,
            Spans::Many(v) => v,
        }
    }
}

/// A head's headers, and what they say about the body's framing and the connection.
pub(crate) struct Fields {
    /// The fields as a map: `None` when they are kept as they came (`RawHeaders`).
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) length: Option<u64>,
    /// `Transfer-Encoding` present; whether its last coding is chunked.
    pub(crate) chunked: Option<bool>,
    /// `Connection: close`.
    pub(crate) close: bool,
    /// `Connection: keep-alive` (what HTTP/1.0 needs to keep the connection).
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
}

/// The headers at `spans` of `head`, as shared slices of it (but for a `Connection` that only
/// says `close` or `keep-alive`); differing `Content-Length`s and one that is not a plain
/// number are errors.
pub(crate) fn header_fields(head: &Bytes, spans: &[Span]) -> Result<Fields, &'static str> {
    let mut f = Fields::new();
    let mut map = HeaderMap::with_capacity(spans.len());
    for &(n, nl, v, vl) in spans {
        let name =
            HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| "a header name is not valid")?;
        // The head's parser has checked the value's bytes; this checks them again.
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| "a header value is not valid")?;
        if f.note(name.as_str().as_bytes(), value.as_bytes())? {
            map.append(name, value);
        }
    }
    f.headers = Some(map);
    Ok(f)
}

impl Fields {
    pub(crate) fn new() -> Fields {
        Fields {
            headers: None,
            length: None,
            chunked: None,
            close: false,
            keep_alive: false,
            expect_continue: false,
        }
    }

    /// Notes what one field (`name` in any case) says; whether it is kept in the map.
    pub(crate) fn note(&mut self, name: &[u8], value: &[u8]) -> Result<bool, &'static str> {
        let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            self.note_length(value)?;
        } else if is("transfer-encoding") {
            self.note_encoding(value);
        } else if is("connection") {
            // Saying no more than close or keep-alive (the usual case), it is not kept: the
            // flags hold what it says, and it is never forwarded. One naming other headers is
            // kept, so that they are dropped too.
            return Ok(self.note_connection(value));
        } else if is("expect") {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(true)
    }

    /// A `Content-Length`: a plain number, the same as any before it.
    pub(crate) fn note_length(&mut self, value: &[u8]) -> Result<(), &'static str> {
        let n = parse_length(value).ok_or("the Content-Length is not a number")?;
        if self.length.is_some_and(|l| l != n) {
            return Err("two different Content-Length headers");
        }
        self.length = Some(n);
        Ok(())
    }

    /// A `Transfer-Encoding`: only the last coding counts.
    pub(crate) fn note_encoding(&mut self, value: &[u8]) {
        self.chunked = Some(last_token_is(value, b"chunked"));
    }

    /// A `Connection`, in one pass over its tokens; whether it names anything besides close
    /// and keep-alive (fields to drop).
    pub(crate) fn note_connection(&mut self, value: &[u8]) -> bool {
        // The usual values, whole: splitting and trimming cost more than the rest of a field.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return false;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return false;
        }
        let mut names_others = false;
        for t in value.split(|b| *b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !t.is_empty() {
                names_others = true;
            }
        }
        names_others
    }
}

/// A plain decimal number of at most 19 digits (so it fits a u64).
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Does a comma-separated header value list `token`?
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

pub(crate) fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How a body is delimited, and how much is left.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    /// This many bytes left.
    Length(u64),
    /// Chunked, at this point.
    Chunked(Chunk),
    /// Until the connection closes (answers only).
    UntilClose,
    /// Read to its end.
    Done,
}

/// Where a chunked body's reading stands.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section, this many bytes so far.
    Trailers(usize),
}

/// The read side of a connection while a request body is being read.
#[derive(Debug)]
pub struct Reader {
    stream: Arc<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    continue_pending: bool,
    failed: bool,
}

/// A request body read straight from the client's connection.
#[derive(Debug)]
pub struct H1Body {
    shared: Arc<Mutex<Reader>>,
}

/// The client's body was cut short or badly framed.
#[derive(Debug, thiserror::Error)]
#[error("the request body is incomplete or badly framed")]
pub struct BadBody;

impl Reader {
    fn next(&mut self) -> Result<Option<Option<Bytes>>, BadBody> {
        decode(&mut self.framing, &mut self.buf)
    }
}

/// The next piece of a body out of `buf`: `Some(Some(data))`, `Some(None)` at the end, `None`
/// when more bytes are needed (at the end of the stream for `UntilClose`).
pub(crate) fn decode(
    framing: &mut Framing,
    buf: &mut BytesMut,
) -> Result<Option<Option<Bytes>>, BadBody> {
    loop {
        match *framing {
            Framing::Done => return Ok(Some(None)),
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Some(buf.split().freeze())));
            }
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (buf.len() as u64).min(n) as usize;
                let data = buf.split_to(take).freeze();
                *framing = match n - take as u64 {
                    0 => Framing::Done,
                    left => Framing::Length(left),
                };
                return Ok(Some(Some(data)));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(None);
                };
                let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = parse_hex(digits.trim_ascii_end()).ok_or(BadBody)?;
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(n)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (buf.len() as u64).min(n) as usize;
                let data = buf.split_to(take).freeze();
                *framing = Framing::Chunked(match n - take as u64 {
                    0 => Chunk::DataEnd,
                    left => Chunk::Data(left),
                });
                return Ok(Some(Some(data)));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(BadBody);
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers(seen)) => {
                let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(None);
                };
                if line.is_empty() {
                    *framing = Framing::Done;
                    return Ok(Some(None));
                }
                let seen = seen + line.len() + 2;
                if seen > MAX_TRAILERS {
                    return Err(BadBody);
                }
                *framing = Framing::Chunked(Chunk::Trailers(seen));
            }
        }
    }
}

/// One CRLF-terminated line out of `buf` (without the CRLF); a bare LF or a line over `max`
/// is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, BadBody> {
    match memchr::memchr(b'\n', buf) {
        None if buf.len() > max => Err(BadBody),
        None => Ok(None),
        Some(i) if i == 0 || buf[i - 1] != b'\r' || i > max => Err(BadBody),
        Some(i) => {
            let line = buf.split_to(i + 1).freeze();
            Ok(Some(line.slice(..i - 1)))
        }
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16)?;
        Some(n * 16 + v as u64)
    })
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Ok(mut r) = self.shared.lock() else {
            return Poll::Ready(Some(Err(Box::new(BadBody))));
        };
        let r = &mut *r;
        if r.continue_pending {
            r.continue_pending = false;
            // The client waits for this before sending; an empty send buffer takes it whole.
            const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
            if !matches!(r.stream.try_write(CONTINUE), Ok(n) if n == CONTINUE.len()) {
                r.failed = true;
                return Poll::Ready(Some(Err(Box::new(BadBody))));
            }
        }
        loop {
            match r.next() {
                Ok(Some(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Some(None)) => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    r.failed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if let Err(e) = ready!(r.stream.poll_read_ready(cx)) {
                r.failed = true;
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            if r.buf.capacity() - r.buf.len() < 4096 {
                r.buf.reserve(32 * 1024);
            }
            match try_read_buf(&r.stream, &mut r.buf) {
                Ok(0) => {
                    r.failed = true;
                    return Poll::Ready(Some(Err(Box::new(BadBody))));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    r.failed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .lock()
            .map_or(true, |r| matches!(r.framing, Framing::Done))
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.lock().map(|r| r.framing) {
            Ok(Framing::Length(n)) => SizeHint::with_exact(n),
            Ok(Framing::Done) => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}

/// How an answer is written.
struct ResponseMode {
    keep_alive: bool,
    head_only: bool,
    http10: bool,
}

impl ResponseMode {
    fn close() -> ResponseMode {
        ResponseMode {
            keep_alive: false,
            head_only: false,
            http10: false,
        }
    }
}

/// Writes the answer; returns whether the connection may take another request.
/// Writes `resp` (with `request_id` as `client-request-id` when it has none).
async fn write_response(
    stream: &TcpStream,
    resp: Response<ResponseBody>,
    mode: &ResponseMode,
    request_id: Option<&crate::proxy::RequestId>,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    if out.capacity() > MAX_KEPT_HEAD {
        *out = Vec::with_capacity(512);
    }
    out.clear();
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = mode.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = mode.keep_alive;
    // The framing: the body's exact length, or chunked, or (HTTP/1.0) until the close.
    let exact = body.size_hint().exact();
    let chunked = !no_body && exact.is_none() && !mode.http10;
    if !no_body && exact.is_none() && mode.http10 {
        keep_alive = false;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_id = false;
    // An upstream answer's own fields, as they came (hop-by-hop ones left out), but for those
    // the proxy set in the map.
    if let Some(raw) = body.fields() {
        has_date = raw.get(Known::Date).is_some();
        has_id = raw.get(Known::ClientRequestId).is_some();
        raw.write_to(out, |name| {
            (!mode.head_only && rawhead::is_name(name, b"content-length"))
                || rawhead::overridden(&parts.headers, name)
        });
    }
    // The fields are written: their box goes to the next answer read on this thread.
    if let Some(raw) = body.take_fields() {
        rawhead::give_back(raw);
    }
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && !mode.head_only)
        {
            continue;
        }
        has_date |= name == header::DATE;
        has_id |= name == crate::forward::CLIENT_REQUEST_ID;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(id) = request_id.filter(|_| !has_id) {
        out.extend_from_slice(b"client-request-id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    if !no_body {
        if let Some(n) = exact {
            push_content_length(out, n);
        } else if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if mode.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        write_all(stream, out).await?;
        return Ok(keep_alive);
    }
    let mut sent: u64 = 0;
    // The head is in `out`, not yet written.
    let mut head = true;
    loop {
        // The first piece of body goes out with the head when it is at hand.
        let frame = if head {
            match futures_util::FutureExt::now_or_never(body.frame()) {
                Some(f) => f,
                None => {
                    write_all(stream, out).await?;
                    head = false;
                    body.frame().await
                }
            }
        } else {
            body.frame().await
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(io::Error::other("the upstream body failed")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if exact.is_some_and(|n| sent > n) {
            return Err(io::Error::other("the body is longer than announced"));
        }
        let mut size_line = [0u8; 20];
        let size_len = if chunked {
            write_hex_line(&mut size_line, data.len())
        } else {
            0
        };
        let crlf: &[u8] = if chunked { b"\r\n" } else { b"" };
        let mut pieces = [
            IoSlice::new(if head { out } else { &[] }),
            IoSlice::new(&size_line[..size_len]),
            IoSlice::new(&data),
            IoSlice::new(crlf),
        ];
        write_all_vectored(stream, &mut pieces).await?;
        head = false;
    }
    if exact.is_some_and(|n| sent != n) {
        return Err(io::Error::other("the body is shorter than announced"));
    }
    if !head {
        out.clear();
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        write_all(stream, out).await?;
    }
    Ok(keep_alive)
}

/// `content-length: N\r\n`, appended to `out` (the formatting machinery cost more than the
/// rest of the head).
pub(crate) fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// A chunk-size line (`HEX\r\n`) for `len` in `buf`; its length.
pub(crate) fn write_hex_line(buf: &mut [u8; 20], len: usize) -> usize {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, d) in buf[..digits].iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

pub(crate) async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_all_vectored(stream: &TcpStream, mut pieces: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !pieces.is_empty() {
        match stream.try_write_vectored(pieces) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut pieces, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `Date` header's value, made once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, value) = c.get();
        if at == secs {
            return value;
        }
        let mut value = [0u8; 29];
        let s = httpdate::fmt_http_date(now);
        if s.len() == 29 {
            value.copy_from_slice(s.as_bytes());
        }
        c.set((secs, value));
        value
    })
}

#[cfg(test)]
mod tests;
