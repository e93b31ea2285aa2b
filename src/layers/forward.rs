//! The innermost service: sends the request to its route's upstream through the pooled
//! client, and waits at most `request_timeout_secs` for the response head. The upstream's
//! time starts here, once the request has its token and its place in the rate limit.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Uri, Version};
use tower::Service;

use super::access_log::Trace;
use super::keep_body::body_error;
use super::route::Routed;
use super::{BoxFuture, Request, Response, Shared};
use crate::body::{self, ReadError};
use crate::error::ProxyError;
use crate::routing::{Route, path_of};
use crate::runtime::Runtime;
use crate::upstream;

/// The upstream's own request ID, kept for the access log.
const UPSTREAM_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("request-id");

/// Sends requests upstream; see the module doc.
#[derive(Clone)]
pub struct Forward {
    client: upstream::Client,
    rt: Arc<Runtime>,
}

impl Forward {
    /// For config `rt`, with the shared client (used unless the request brings its own).
    pub fn new(shared: &Arc<Shared>, rt: &Arc<Runtime>) -> Self {
        Forward {
            client: shared.client.clone(),
            rt: rt.clone(),
        }
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let rt = self.rt.clone();
        // A per-core server thread puts its own pool in the request (see `percore`).
        let client = req
            .extensions()
            .get::<upstream::Client>()
            .unwrap_or(&self.client)
            .clone();
        Box::pin(async move {
            let routed = Routed::of(&req)?;
            let trace = req.extensions().get::<Trace>().cloned();
            let mut req = to_upstream(req, routed.route(&rt))?;
            // Handed back with the response, for a layer that sends the request again.
            let handed_back = body::Sent(std::mem::take(req.extensions_mut()));
            let started = Instant::now();
            let sent = tokio::time::timeout(rt.request_timeout, client.send(req)).await;
            let resp = match sent {
                Err(_) => return Err(ProxyError::UpstreamTimeout),
                Ok(Err(e)) => return Err(failure(&e, &routed.route(&rt).name)),
                Ok(Ok(resp)) => resp,
            };
            if let Some(trace) = trace {
                trace.set_upstream(started.elapsed(), resp.headers().get(UPSTREAM_REQUEST_ID));
            }
            let mut resp = resp.map(body::boxed);
            resp.extensions_mut().insert(handed_back);
            Ok(resp)
        })
    }
}

/// The request as the upstream gets it: the route's scheme and authority, its path (the
/// prefix removed when asked, the upstream's base path added; an empty path is `/`) and the
/// client's query, over HTTP/1.1 (or HTTP/2, which the client picks by ALPN).
fn to_upstream(mut req: Request, route: &Route) -> Result<Request, ProxyError> {
    let path = route.upstream_path(path_of(req.uri()));
    let up = &route.upstream;
    let uri = match req.uri().query() {
        Some(q) => format!("{}://{}{path}?{q}", up.scheme, up.authority),
        None => format!("{}://{}{path}", up.scheme, up.authority),
    };
    *req.uri_mut() = Uri::try_from(uri).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    *req.version_mut() = Version::HTTP_11;
    Ok(req)
}

/// The error for a request the client could not complete: the client's body failing (over
/// the limit, stalled, broken) is the client's fault; anything else is the upstream's.
fn failure(e: &hyper_util::client::legacy::Error, route: &str) -> ProxyError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>()
            || err.is::<tower_http::timeout::TimeoutError>()
        {
            return body_error(ReadError::of(err));
        }
        cur = err.source();
    }
    tracing::warn!(route, error = %e, source = ?std::error::Error::source(e), "upstream request failed");
    ProxyError::UpstreamUnavailable
}
