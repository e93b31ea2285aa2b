//! The request body: refused when its declared length is over `max_request_body_bytes`,
//! limited to it while it streams (http-body-util's `Limited`), and read up to
//! `REPLAY_KEEP_BYTES` so that a request whose whole body fits can be sent again (after a 401,
//! or an absorbed 429). The kept bytes ride in the request's extensions (`body::Kept`).

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxFuture, Next, Request, Response, send};
use crate::body::{self, Kept, ReadError};
use crate::error::ProxyError;
use crate::runtime::Runtime;

/// Request bodies up to this size are kept so the request can be sent again.
pub const REPLAY_KEEP_BYTES: usize = 64 * 1024;

/// See the module doc.
#[derive(Clone)]
pub struct KeepBodyLayer {
    max_body_bytes: u64,
}

impl KeepBodyLayer {
    /// For config `rt` (its body limit).
    pub fn new(rt: &Arc<Runtime>) -> Self {
        KeepBodyLayer {
            max_body_bytes: rt.max_body_bytes,
        }
    }
}

impl<S> Layer<S> for KeepBodyLayer
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = KeepBody;
    fn layer(&self, inner: S) -> KeepBody {
        KeepBody {
            inner: Next::new(inner),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// The service of `KeepBodyLayer`.
#[derive(Clone)]
pub struct KeepBody {
    inner: Next,
    max_body_bytes: u64,
}

impl Service<Request> for KeepBody {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (inner, limit) = (self.inner.clone(), self.max_body_bytes);
        Box::pin(async move {
            let declared = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                return Err(ProxyError::BodyTooLarge);
            }
            let (mut parts, incoming) = req.into_parts();
            let (body, kept) = body::limit_and_keep(incoming, limit, REPLAY_KEEP_BYTES)
                .await
                .map_err(body_error)?;
            if let Some(kept) = kept {
                parts.extensions.insert(Kept(kept));
            }
            send(&inner, Request::from_parts(parts, body)).await
        })
    }
}

/// The error to answer when the client's body could not be read.
pub fn body_error(e: ReadError) -> ProxyError {
    match e {
        ReadError::TooLarge => ProxyError::BodyTooLarge,
        ReadError::Stalled => ProxyError::RequestTimeout,
        ReadError::Broken => ProxyError::BadRequest("the request body could not be read"),
    }
}
