//! The body types of the proxy: what goes upstream (streamed, or kept when small so that a
//! request can be replayed) and what goes back to the client (streamed, or made here).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::rewrite::RewriteState;

/// Boxed error used by the body types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body is over `max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub struct BodyTooLarge;

/// Whether the client's request body has been read to its end. A response sent before that
/// must close the connection (and say so): the unread rest cannot be told from a next request.
#[derive(Debug, Clone, Default)]
pub struct BodyDone(Option<Arc<AtomicBool>>);

impl BodyDone {
    /// For a request whose body `ended` already (no body), or not.
    pub fn new(ended: bool) -> BodyDone {
        BodyDone((!ended).then(|| Arc::new(AtomicBool::new(false))))
    }

    /// The body has been read to its end.
    pub fn set(&self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Has it?
    pub fn get(&self) -> bool {
        self.0.as_ref().is_none_or(|f| f.load(Ordering::Relaxed))
    }
}

/// A body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// Fully read (or empty): can be sent again.
    Full(Option<Bytes>),
    /// Too large to keep: the part already read, then the rest of the client's stream.
    Stream {
        /// Bytes read while trying to keep the body.
        prefix: Option<Bytes>,
        /// The rest (taken by the drain when the body is dropped unread).
        rest: Option<ClientBody>,
        /// Bytes seen so far (prefix included).
        seen: u64,
        /// The limit.
        limit: u64,
        /// Set when the client's body has been read to its end.
        done: BodyDone,
    },
}

impl RequestBody {
    /// Reads up to `keep` bytes; a body that ends within them can be replayed. Errors with
    /// `BodyTooLarge` as soon as more than `limit` bytes arrive.
    pub async fn read(
        mut incoming: ClientBody,
        keep: usize,
        limit: u64,
        done: &BodyDone,
    ) -> Result<RequestBody, BoxError> {
        if incoming.is_end_stream() {
            done.set();
            return Ok(RequestBody::Full(None));
        }
        let mut buf = BytesMut::new();
        while buf.len() <= keep {
            match incoming.frame().await {
                None => {
                    done.set();
                    return Ok(RequestBody::Full(Some(buf.freeze())));
                }
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        buf.extend_from_slice(&data);
                    }
                    if buf.len() as u64 > limit {
                        return Err(Box::new(BodyTooLarge));
                    }
                }
            }
        }
        let seen = buf.len() as u64;
        Ok(RequestBody::Stream {
            prefix: Some(buf.freeze()),
            rest: Some(incoming),
            seen,
            limit,
            done: done.clone(),
        })
    }

    /// A copy for a second attempt, when the body was kept whole.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Stream { .. } => None,
        }
    }
}

/// A client body dropped unread (the proxy answered without sending it on) is read to its end
/// in the background when its length is known and at most this...
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// ...within this time, so that the client can finish sending and read the answer, and the
/// connection stays usable. Otherwise the answer says `Connection: close`.
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for RequestBody {
    fn drop(&mut self) {
        let RequestBody::Stream { rest, done, .. } = self else {
            return;
        };
        let Some(rest) = rest.take() else {
            return;
        };
        if done.get() || rest.is_end_stream() {
            return;
        }
        let bounded = rest
            .size_hint()
            .exact()
            .is_some_and(|n| n <= DRAIN_MAX_BYTES);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !bounded {
            return;
        }
        // Counted as read: the drain reads it before the connection takes another request.
        done.set();
        let ClientBody::Hyper(rest) = rest else {
            // Read from the connection itself: its task drains the rest after the answer.
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut rest = rest;
                while let Some(Ok(_)) = rest.frame().await {}
            };
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
        });
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            RequestBody::Stream {
                prefix,
                rest,
                seen,
                limit,
                done,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                let Some(rest) = rest.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        done.set();
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            RequestBody::Stream { prefix, rest, .. } => {
                prefix.is_none() && rest.as_ref().is_none_or(ClientBody::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Stream { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest
                    .as_ref()
                    .map_or_else(SizeHint::new, ClientBody::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    hint.set_upper(u + p);
                }
                hint
            }
        }
    }
}

/// A body from the client.
#[derive(Debug)]
pub enum ClientBody {
    /// None (no `Content-Length`, or 0, and not chunked).
    Empty,
    /// From hyper (HTTP/2).
    Hyper(Incoming),
    /// Read from the HTTP/1 connection by `front`.
    H1(crate::front::H1Body),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::H1(b) => b.size_hint(),
        }
    }
}

/// A body sent back to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Made by the proxy, or read whole; with the upstream's answer fields as they came (see
    /// `crate::rawhead`) when it is an HTTP/1.1 answer read whole.
    Full(Option<Bytes>, Option<Box<crate::rawhead::RawHeaders>>),
    /// Streamed from the upstream.
    Upstream(crate::upstream::UpBody),
    /// Streamed from the upstream with its paging links rewritten.
    Rewritten {
        /// The upstream body.
        body: crate::upstream::UpBody,
        /// The rewriter and what it holds back.
        state: Box<RewriteState>,
        /// The upstream body has ended.
        done: bool,
    },
}

impl ResponseBody {
    /// A body made here.
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::Full(Some(bytes), None)
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None, None)
    }

    /// An HTTP/1.1 answer's own fields, when they are kept as the bytes read.
    pub fn fields(&self) -> Option<&crate::rawhead::RawHeaders> {
        match self {
            ResponseBody::Full(_, fields) => fields.as_deref(),
            ResponseBody::Upstream(body) | ResponseBody::Rewritten { body, .. } => body.fields(),
        }
    }

    /// The same, taken out.
    pub fn take_fields(&mut self) -> Option<Box<crate::rawhead::RawHeaders>> {
        match self {
            ResponseBody::Full(_, fields) => fields.take(),
            ResponseBody::Upstream(body) | ResponseBody::Rewritten { body, .. } => {
                body.take_fields()
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b, _) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ResponseBody::Rewritten { body, state, done } => poll_rewritten(body, state, done, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b, _) => b.as_ref().is_none_or(Bytes::is_empty),
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Rewritten { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b, _) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Rewritten { .. } => SizeHint::new(),
        }
    }
}

/// Polls the upstream until the rewriter has something to send. Trailers are dropped: a
/// rewritten body is JSON, which has none.
fn poll_rewritten(
    body: &mut crate::upstream::UpBody,
    state: &mut RewriteState,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    while !*done {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let out = state.push(data);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
            Poll::Ready(None) => {
                *done = true;
                let rest = state.finish();
                if !rest.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }
    Poll::Ready(None)
}
