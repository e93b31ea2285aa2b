//! HTTP/1.1 to the upstream, driven by the request's own task: the request is written and the
//! answer read on the connection directly, with no connection task and no channel in between,
//! and the connection goes back to the pool when its answer's body has been read to the end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Failure, Pooled, Sender};
use crate::body::{BoxError, RequestBody};
use crate::front::{
    FEW_HEADERS, Fields, Framing, decode, header_fields, push_content_length, write_hex_line,
};
use crate::h1parse;
use crate::rawhead::RawHeaders;

/// An answer's head may take this many bytes, and this many headers.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// After a failed upload, how long an answer the upstream sent early may take to be read.
const EARLY_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// An HTTP/1.1 connection to the upstream and what has been read from it.
pub struct RawConn {
    io: TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>,
    buf: BytesMut,
    /// Where request heads are written, reused.
    out: Vec<u8>,
}

impl RawConn {
    pub(super) fn new(io: MaybeHttpsStream<TokioIo<TcpStream>>) -> RawConn {
        RawConn {
            io: TokioIo::new(io),
            buf: BytesMut::with_capacity(8 * 1024),
            out: Vec::with_capacity(512),
        }
    }

    /// An idle connection is usable when nothing arrived on it: the upstream closing it (or
    /// sending anything unasked) shows up as readable, which costs no system call to see.
    pub(super) fn idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // Over plain TCP, the socket's readiness says it without registering a waker: nothing
        // seen since the answer was read through, nothing arrived. Seen: the probe below
        // tells a close or stray bytes from readiness left over by a read that filled the
        // buffer.
        if let Some(tcp) = plain_tcp(&self.io) {
            let seen = tcp.try_io(tokio::io::Interest::READABLE, || Ok(())).is_ok();
            if !seen {
                return true;
            }
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Reads more into `buf`; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        if let Some(tcp) = plain_tcp(&self.io) {
            return crate::front::poll_read_buf(tcp, &mut self.buf, cx);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// The socket of `io` when it is plain TCP: read and written directly, not through the TLS
/// wrapper's and hyper's buffers.
fn plain_tcp(io: &TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>) -> Option<&TcpStream> {
    match io.inner() {
        MaybeHttpsStream::Http(tcp) => Some(tcp.inner()),
        MaybeHttpsStream::Https(_) => None,
    }
}

/// Where a connection goes back to when its answer has been read.
#[derive(Clone)]
pub(super) struct Home {
    /// The `Upstream`'s pool, and the origin's place in it (see `super::POOLS`).
    pub(super) upstream: u64,
    pub(super) origin: Option<usize>,
    /// When the request was sent (the caller's clock reading): the connection's idle time
    /// counts from there.
    pub(super) sent: tokio::time::Instant,
}

impl Home {
    fn checkin(&self, conn: Box<RawConn>) {
        super::checkin(
            self.upstream,
            self.origin,
            Pooled::new(Sender::H1(conn), self.sent),
        );
    }
}

/// What became of a request on an HTTP/1.1 connection.
pub(super) enum Outcome {
    Answer(Box<Response<UpBody>>),
    /// The (reused) connection failed before it took the request; here it is back.
    Unsent(Box<Request<RequestBody>>),
    Failed(Failure),
}

/// Sends `req` on `conn` and reads the answer's head. `reused`: the connection served a
/// request before, so a failure before any answer may mean it was closed while idle.
pub(super) async fn send(
    mut conn: Box<RawConn>,
    req: Box<Request<RequestBody>>,
    added: &super::Added<'_>,
    authority: &Authority,
    home: Home,
    reused: bool,
) -> Outcome {
    let head_only = req.method() == Method::HEAD;
    // The connection's own buffer, kept for its next request.
    let mut head = std::mem::take(&mut conn.out);
    head.clear();
    let rest = request_head(&req, added, authority, &mut head);
    let written = write_head(&mut conn, &head).await;
    if head.capacity() <= MAX_KEPT_HEAD {
        conn.out = head;
    }
    if let Err(e) = written {
        return if reused {
            Outcome::Unsent(req)
        } else {
            Outcome::Failed(Failure::from(BoxError::from(e)))
        };
    }
    if rest {
        // A body too large to have been kept: streamed, chunked unless its length is known.
        let chunked = req.body().size_hint().exact().is_none();
        let mut body = (*req).into_body();
        if let Err(e) = write_body(&mut conn, &mut body, chunked).await {
            // The upstream may have answered early (a 413, say) and stopped reading: its
            // answer, when it came, is passed on rather than the failed write.
            let early = tokio::time::timeout(EARLY_ANSWER_WAIT, read_head(&mut conn)).await;
            return match early {
                Ok(Ok(mut parsed)) => {
                    parsed.keep_alive = false;
                    Outcome::Answer(answer(conn, parsed, head_only, home))
                }
                _ => Outcome::Failed(Failure::from(e)),
            };
        }
    }
    match read_head(&mut conn).await {
        Ok(parsed) => Outcome::Answer(answer(conn, parsed, head_only, home)),
        Err(ReadError::Closed) => Outcome::Failed(Failure {
            error: BoxError::from("the upstream closed the connection before answering"),
            stale: reused,
        }),
        Err(ReadError::Io(e)) => {
            let stale = reused
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                );
            Outcome::Failed(Failure {
                error: BoxError::from(e),
                stale,
            })
        }
        Err(ReadError::Bad(why)) => Outcome::Failed(Failure::from(BoxError::from(why))),
    }
}

/// A request head buffer larger than this (a large body kept whole) is not kept.
const MAX_KEPT_HEAD: usize = 8 * 1024;

/// The request head, with a body kept whole appended, into `out`; `true` when a streamed body
/// follows.
pub(crate) fn request_head(
    req: &Request<RequestBody>,
    added: &super::Added<'_>,
    authority: &Authority,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut sent_length = false;
    for (name, value) in req.headers() {
        if name == header::HOST || name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            sent_length = true;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(raw) = added.raw {
        raw.write_forwarded(out, added.tenant_header.as_str().as_bytes());
        sent_length |= raw.get(crate::rawhead::Known::ContentLength).is_some();
    }
    out.extend_from_slice(b"authorization: ");
    out.extend_from_slice(added.bearer.as_bytes());
    out.extend_from_slice(b"\r\nclient-request-id: ");
    out.extend_from_slice(added.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    let body = req.body();
    let (whole, rest) = match body {
        RequestBody::Full(b) => (b.clone().unwrap_or_default(), false),
        RequestBody::Stream { .. } => (Bytes::new(), true),
    };
    if rest {
        match body.size_hint().exact() {
            Some(n) => push_content_length(out, n),
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    } else if !whole.is_empty() || sent_length || method_has_body(req.method()) {
        push_content_length(out, whole.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&whole);
    rest
}

fn method_has_body(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

async fn write_head(conn: &mut RawConn, head: &[u8]) -> std::io::Result<()> {
    // Nothing to flush over plain TCP.
    if let Some(tcp) = plain_tcp(&conn.io) {
        return crate::front::write_all(tcp, head).await;
    }
    conn.io.write_all(head).await?;
    conn.io.flush().await
}

async fn write_body(
    conn: &mut RawConn,
    body: &mut RequestBody,
    chunked: bool,
) -> Result<(), BoxError> {
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut size_line = [0u8; 20];
            let n = write_hex_line(&mut size_line, data.len());
            conn.io.write_all(&size_line[..n]).await?;
            conn.io.write_all(&data).await?;
            conn.io.write_all(b"\r\n").await?;
        } else {
            conn.io.write_all(&data).await?;
        }
    }
    if chunked {
        conn.io.write_all(b"0\r\n\r\n").await?;
    }
    conn.io.flush().await?;
    Ok(())
}

enum ReadError {
    /// The connection ended before any byte of an answer.
    Closed,
    Io(std::io::Error),
    Bad(&'static str),
}

struct ParsedHead {
    status: StatusCode,
    version: Version,
    /// The fields as a map, when they are not kept as they came (`raw`).
    headers: Option<HeaderMap>,
    /// The fields as they came (then `headers` is `None`).
    raw: Option<Box<RawHeaders>>,
    framing: Framing,
    keep_alive: bool,
}

/// Reads the answer's head (skipping 1xx answers) off `conn`.
async fn read_head(conn: &mut RawConn) -> Result<ParsedHead, ReadError> {
    let mut seen_any = false;
    loop {
        if !conn.buf.is_empty() {
            seen_any = true;
            match parse_head(&mut conn.buf)? {
                Some(head) if head.status.is_informational() => {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ReadError::Bad("the upstream switched protocols"));
                    }
                    continue;
                }
                Some(head) => return Ok(head),
                None if conn.buf.len() > MAX_HEAD_BYTES => {
                    return Err(ReadError::Bad("the upstream's answer head is too large"));
                }
                None => {}
            }
        }
        match conn.fill().await {
            Ok(0) if seen_any => return Err(ReadError::Bad("the upstream's answer was cut short")),
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => {}
            Err(e) if seen_any => return Err(ReadError::Io(e)),
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, ReadError> {
    let bad = |why| Err(ReadError::Bad(why));
    let mut few = [(0, 0, 0, 0); FEW_HEADERS];
    let (line, spans) = match h1parse::parse_response(buf, &mut few, MAX_HEADERS) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return bad("the upstream's answer is not valid HTTP/1.1"),
    };
    let (len, version) = (line.len, line.version);
    let Ok(status) = StatusCode::from_u16(line.code) else {
        return bad("the upstream's status is not valid");
    };
    let head = buf.split_to(len).freeze();
    // The fields stay in the head's bytes (forwarded as they came), unless there are too many.
    let (raw, fields) = match RawHeaders::parse_into(crate::rawhead::spare(), head.clone(), &spans)
    {
        Ok(Some((raw, fields))) => (Some(raw), Ok(fields)),
        Ok(None) => (None, header_fields(&head, &spans)),
        Err(why) => (None, Err(why)),
    };
    let Fields {
        mut headers,
        length,
        chunked,
        close,
        keep_alive,
        ..
    } = match fields {
        Ok(f) => f,
        Err(why) => return bad(why),
    };
    let mut close = close || (version == 0 && !keep_alive);
    let framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked(crate::front::Chunk::Size),
        (Some(false), _) => {
            close = true;
            Framing::UntilClose
        }
        (None, Some(0)) => Framing::Done,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    };
    if chunked.is_some() {
        // Framed by the coding: a Content-Length next to it means nothing (RFC 9112 §6.3).
        if let Some(headers) = &mut headers {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    Ok(Some(ParsedHead {
        status,
        version: if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        },
        headers,
        raw,
        framing,
        keep_alive: !close,
    }))
}

/// The answer, boxed: it goes up through several layers, and was copied at each.
fn answer(
    conn: Box<RawConn>,
    head: ParsedHead,
    head_only: bool,
    home: Home,
) -> Box<Response<UpBody>> {
    let ParsedHead {
        status,
        version,
        headers,
        raw,
        mut framing,
        mut keep_alive,
    } = head;
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        framing = Framing::Done;
    }
    if matches!(framing, Framing::UntilClose) {
        keep_alive = false;
    }
    let mut body = RawBody {
        conn: Some(conn),
        framing,
        keep_alive,
        home: Some(home),
        fields: raw,
    };
    if matches!(body.framing, Framing::Done) {
        body.finish();
    }
    let mut resp = Box::new(Response::new(UpBody::H1(body)));
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    if let Some(headers) = headers {
        *resp.headers_mut() = headers;
    }
    resp
}

/// An answer's body read off its HTTP/1.1 connection.
pub struct RawBody {
    conn: Option<Box<RawConn>>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
    /// The answer's fields as read (see `crate::rawhead`): they travel with the body, which
    /// costs one allocation where the response's extensions cost three.
    fields: Option<Box<RawHeaders>>,
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("framing", &self.framing)
            .finish()
    }
}

/// The upstream's answer body was cut short or badly framed.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's answer body is incomplete or badly framed")]
pub struct BadAnswerBody;

impl RawBody {
    /// The body has been read: the connection goes back to the pool when it can carry more.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if self.keep_alive && conn.buf.is_empty() {
            home.checkin(conn);
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if matches!(this.framing, Framing::Done) {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(Some(Err(Box::new(BadAnswerBody))));
            };
            match decode(&mut this.framing, &mut conn.buf) {
                Ok(Some(Some(data))) => {
                    if matches!(this.framing, Framing::Done) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Some(None)) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(_) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(BadAnswerBody))));
                }
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.framing, Framing::UntilClose) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(BadAnswerBody))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::new(),
        }
    }
}

/// The body of an upstream answer.
#[derive(Debug)]
pub enum UpBody {
    /// Over HTTP/2, from hyper.
    H2(Incoming),
    /// Over HTTP/1.1, read here.
    H1(RawBody),
}

impl UpBody {
    /// An HTTP/1.1 answer's own fields, kept as the bytes read (an HTTP/2 answer's are in its
    /// header map).
    pub fn fields(&self) -> Option<&RawHeaders> {
        match self {
            UpBody::H1(b) => b.fields.as_deref(),
            UpBody::H2(_) => None,
        }
    }

    /// The same, taken out.
    pub fn take_fields(&mut self) -> Option<Box<RawHeaders>> {
        match self {
            UpBody::H1(b) => b.fields.take(),
            UpBody::H2(_) => None,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpBody::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H2(b) => b.is_end_stream(),
            UpBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H2(b) => b.size_hint(),
            UpBody::H1(b) => b.size_hint(),
        }
    }
}
