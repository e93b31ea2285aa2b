//! Paging links that lead back through the proxy: on routes with `rewrite_links`, the
//! `Location` header and the `@odata.nextLink` / `@odata.deltaLink` values of JSON answers that
//! point at the route's upstream are rewritten to the Host the client used (as checked by the
//! guard), in the tenant-scoped form `/tenants/{tenant}/...` when the request's tenant came
//! from its header or path (so following a link stays in that tenant). A small body is rewritten whole, with an exact `Content-Length`; a larger one while
//! it streams (`crate::rewrite`), without one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::guard::CheckedHost;
use super::route::Routed;
use super::{BoxFuture, Next, Request, Response, send};
use crate::body::{self, Body, BoxError};
use crate::error::ProxyError;
use crate::rewrite::{LinkRewriter, RewriteState, may_contain_link};
use crate::runtime::Runtime;

/// JSON bodies up to this size are rewritten whole, keeping an exact `Content-Length`.
const REWRITE_WHOLE_BYTES: u64 = 256 * 1024;

/// Rewrites links; see the module doc.
#[derive(Clone)]
pub struct RewriteLayer(Arc<Runtime>);

impl RewriteLayer {
    /// For config `rt`.
    pub fn new(rt: &Arc<Runtime>) -> Self {
        RewriteLayer(rt.clone())
    }
}

impl<S> Layer<S> for RewriteLayer
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = Rewrite;
    fn layer(&self, inner: S) -> Rewrite {
        Rewrite {
            inner: Next::new(inner),
            rt: self.0.clone(),
        }
    }
}

/// The service of `RewriteLayer`.
#[derive(Clone)]
pub struct Rewrite {
    inner: Next,
    rt: Arc<Runtime>,
}

impl Service<Request> for Rewrite {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (inner, rt) = (self.inner.clone(), self.rt.clone());
        let target = Target::of(&rt, &req);
        let head = req.method() == Method::HEAD;
        Box::pin(async move {
            let resp = send(&inner, req).await?;
            match target {
                Some(target) => rewrite(resp, || target.rewriter(&rt), head).await,
                None => Ok(resp),
            }
        })
    }
}

/// Where a request whose route rewrites links came in: its route, the Host it used and its
/// link tenant. The rewriter is built from it only for an answer that may hold a link.
struct Target {
    routed: Routed,
    host: CheckedHost,
}

impl Target {
    fn of(rt: &Runtime, req: &Request) -> Option<Target> {
        let routed = req.extensions().get::<Routed>()?;
        let host = req.extensions().get::<CheckedHost>()?;
        routed.route(rt).rewrite_links.then(|| Target {
            routed: routed.clone(),
            host: host.clone(),
        })
    }

    fn rewriter(&self, rt: &Runtime) -> LinkRewriter {
        self.routed
            .route(rt)
            .link_rewriter(self.host.0.as_str(), self.routed.link_tenant.as_deref())
    }
}

async fn rewrite(
    resp: Response,
    rewriter: impl Fn() -> LinkRewriter,
    head: bool,
) -> Result<Response, ProxyError> {
    let (mut parts, incoming) = resp.into_parts();
    let mut built = None;
    let location = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| built.get_or_insert_with(&rewriter).rewrite_location(l))
        .and_then(|l| HeaderValue::try_from(l).ok());
    if let Some(location) = location {
        parts.headers.insert(header::LOCATION, location);
    }
    if head || !is_json(parts.headers.get(header::CONTENT_TYPE)) || incoming.is_end_stream() {
        return Ok(Response::from_parts(parts, incoming));
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n <= REWRITE_WHOLE_BYTES) {
        let whole = incoming
            .collect()
            .await
            .map_err(|_| ProxyError::UpstreamUnavailable)?
            .to_bytes();
        if !may_contain_link(&whole) {
            return Ok(Response::from_parts(parts, body::full(whole)));
        }
        let mut state = RewriteState::new(built.unwrap_or_else(rewriter));
        let mut out = state.push(&whole).to_vec();
        out.extend_from_slice(&state.finish());
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        return Ok(Response::from_parts(parts, body::full(out)));
    }
    // The length changes as the body streams.
    parts.headers.remove(header::CONTENT_LENGTH);
    let rewritten = Rewritten {
        body: incoming,
        state: RewriteState::new(built.unwrap_or_else(rewriter)),
        done: false,
    };
    Ok(Response::from_parts(parts, body::boxed(rewritten)))
}

/// Is the `Content-Type` JSON (`application/json` or `*/*+json`)?
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim();
    mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
}

/// An upstream body with its links rewritten as it streams. Trailers are dropped: a
/// rewritten body is JSON, which has none.
struct Rewritten {
    body: Body,
    state: RewriteState,
    done: bool,
}

impl http_body::Body for Rewritten {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        while !this.done {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let out = this.state.push(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.state.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}
