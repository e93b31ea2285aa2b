//! The one body type that travels between the layers, and the request body kept so that a
//! request can be sent again (after an upstream 401, or an absorbed 429/503).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, Limited};

/// Boxed error used by the body types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The body of every request and response between the layers.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into `Body`.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A client's request body, which fails once it sends nothing for `idle` (tower-http's
/// `TimeoutBody`). Dropped unread (the proxy answered without sending it on), the rest is
/// read and thrown away in the background when its length is known and at most
/// `DRAIN_MAX_BYTES`, within `DRAIN_MAX_TIME` (and while it keeps coming): the client can
/// then finish sending and read the answer, and its connection stays usable. Otherwise
/// hyper closes the connection after the answer.
pub fn from_client(
    req: http::Request<hyper::body::Incoming>,
    idle: std::time::Duration,
) -> http::Request<Body> {
    let abandoned = Abandoned::default();
    let (mut parts, incoming) = req.into_parts();
    parts.extensions.insert(abandoned.clone());
    let body = ClientBody {
        length: http_body::Body::size_hint(&incoming).exact(),
        ended: http_body::Body::is_end_stream(&incoming),
        body: Some(Box::pin(TimeoutBody::new(idle, incoming))),
        seen: 0,
        abandoned,
    };
    http::Request::from_parts(parts, boxed(body))
}

type TimeoutBody = tower_http::timeout::TimeoutBody<hyper::body::Incoming>;

/// Set when a client's body was dropped unread and will not be drained: the connection then
/// cannot carry another request. In the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Abandoned(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Abandoned {
    /// Was the body abandoned?
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The most of an unread request body read in the background...
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// ...and for how long.
pub const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// See `from_client`. The timeout body holds a timer, so it is pinned in a box; it tells no
/// length, so the length the client declared is kept here.
struct ClientBody {
    body: Option<Pin<Box<TimeoutBody>>>,
    /// The declared length, if any.
    length: Option<u64>,
    /// Bytes read so far.
    seen: u64,
    ended: bool,
    abandoned: Abandoned,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.length == Some(self.seen)
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.seen)),
            None => SizeHint::new(),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(mut rest) = self.body.take() else {
            return;
        };
        if http_body::Body::is_end_stream(self) {
            return;
        }
        let left = self.length.map(|n| n.saturating_sub(self.seen));
        if left.is_none_or(|n| n > DRAIN_MAX_BYTES) {
            self.abandoned
                .0
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let drain = async { while let Some(Ok(_)) = rest.frame().await {} };
                let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
            });
        }
    }
}

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    boxed(Empty::<Bytes>::new())
}

/// The whole request body, kept in the request's extensions when it was small enough: the
/// request can then be sent again.
#[derive(Debug, Clone)]
pub struct Kept(pub Bytes);

/// What a request is sent again from (see `Kept`): its head and kept body, without its
/// extensions. Those travel with the request to the upstream and come back in the response
/// (`Sent`), so a copy is made only of what the upstream consumes.
#[derive(Debug)]
pub struct Replay {
    head: http::Request<()>,
    kept: Bytes,
}

/// The request's extensions, handed back in its response's extensions by the innermost
/// service, for a layer that sends the request again.
#[derive(Debug, Clone)]
pub struct Sent(pub http::Extensions);

/// What `req` can be sent again from, when its whole body was kept.
pub fn replay(req: &http::Request<Body>) -> Option<Replay> {
    let kept = req.extensions().get::<Kept>()?.0.clone();
    let mut head = http::Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some(Replay { head, kept })
}

impl Replay {
    /// The request again, with the extensions its first sending handed back in `resp`.
    pub fn into_request<B>(self, resp: &mut http::Response<B>) -> http::Request<Body> {
        let mut req = self.head.map(|()| full(self.kept));
        if let Some(Sent(extensions)) = resp.extensions_mut().remove::<Sent>() {
            *req.extensions_mut() = extensions;
        }
        req
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// More than the allowed bytes.
    TooLarge,
    /// No data within the body timeout (tower-http's `TimeoutBody`).
    Stalled,
    /// The client broke the body off or framed it badly.
    Broken,
}

impl ReadError {
    /// Classifies a body error by the errors in its chain.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> ReadError {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if err.is::<http_body_util::LengthLimitError>() {
                return ReadError::TooLarge;
            }
            if err.is::<tower_http::timeout::TimeoutError>() {
                return ReadError::Stalled;
            }
            cur = err.source();
        }
        ReadError::Broken
    }
}

/// Limits `body` to `limit` bytes and reads up to `keep` of them. A body that ends within
/// `keep` comes back whole, with its bytes to keep; a longer one comes back as what was read
/// followed by the rest, still streaming (and still limited).
pub async fn limit_and_keep(
    body: Body,
    limit: u64,
    keep: usize,
) -> Result<(Body, Option<Bytes>), ReadError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = Limited::new(body, limit);
    if http_body::Body::is_end_stream(&body) {
        return Ok((empty(), Some(Bytes::new())));
    }
    let mut read = BytesMut::new();
    while read.len() <= keep {
        match body.frame().await {
            None => {
                let read = read.freeze();
                return Ok((full(read.clone()), Some(read)));
            }
            Some(Err(e)) => return Err(ReadError::of(&*e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
        }
    }
    let rest = Prefixed {
        prefix: Some(read.freeze()),
        rest: boxed(body),
    };
    Ok((boxed(rest), None))
}

/// Bytes already read, then the rest of the stream.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_small_body_is_kept_whole_for_replay() {
        let (body, kept) = limit_and_keep(chunks(&[b"ab", b"cd"]), 100, 10)
            .await
            .unwrap();
        assert_eq!(kept.unwrap(), "abcd");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_large_body_streams_on_whole_and_is_not_kept() {
        let (body, kept) = limit_and_keep(chunks(&[b"abcdef", b"ghij", b"kl"]), 100, 4)
            .await
            .unwrap();
        assert!(kept.is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghijkl");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_early_or_while_it_streams() {
        let early = limit_and_keep(chunks(&[b"abcdef"]), 4, 10).await;
        assert!(matches!(early, Err(ReadError::TooLarge)));
        let (body, _) = limit_and_keep(chunks(&[b"abc", b"def", b"ghi"]), 7, 2)
            .await
            .unwrap();
        let err = body.collect().await.unwrap_err();
        assert!(matches!(ReadError::of(&*err), ReadError::TooLarge));
    }

    #[test]
    fn a_request_is_replayed_only_with_its_kept_body() {
        let mut req = http::Request::post("/x").body(empty()).unwrap();
        assert!(replay(&req).is_none());
        req.extensions_mut().insert(Kept(Bytes::from_static(b"q")));
        req.headers_mut()
            .insert("x-a", http::HeaderValue::from_static("1"));
        let template = replay(&req).unwrap();
        let mut extensions = http::Extensions::new();
        extensions.insert(7u8);
        let mut resp = http::Response::new(());
        resp.extensions_mut().insert(Sent(extensions));
        let copy = template.into_request(&mut resp);
        assert_eq!(copy.method(), http::Method::POST);
        assert_eq!(copy.headers()["x-a"], "1");
        assert_eq!(
            copy.extensions().get::<u8>(),
            Some(&7),
            "the extensions came back"
        );
        assert!(resp.extensions().get::<Sent>().is_none());
    }
}
