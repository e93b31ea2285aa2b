//! The request path as tower layers, one policy step each, composed by `stack` in request
//! order. Between them travel only `http::Request<Body>` and `http::Response<Body>`; what a
//! step learns for later ones (the request ID, the checked Host, the route and tenant, the
//! kept body) rides in the request's extensions. Errors are `ProxyError` until `rescue` turns
//! them into Defender-shaped responses.

pub mod access_log;
pub mod bearer;
pub mod check;
pub mod connection;
pub mod forward;
pub mod guard;
pub mod headers;
pub mod keep_body;
pub mod ratelimit;
pub mod request_id;
pub mod rescue;
pub mod rewrite;
pub mod route;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::ratelimit::Limiter;
use crate::runtime::Runtime;
use crate::server::Handler;
use crate::telemetry::Metrics;
use crate::token::TokenCache;
use crate::upstream;

/// A request between the layers.
pub type Request = http::Request<Body>;
/// A response between the layers.
pub type Response = http::Response<Body>;
/// The future of a layer that waits on something.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// The rest of the path below a layer that waits on something. Shared, not cloned: a layer
/// that sends a request more than once, or holds it across waits, takes another handle on
/// the same services.
pub struct Next<E = ProxyError>(
    Arc<dyn Fn(Request) -> BoxFuture<Result<Response, E>> + Send + Sync>,
);

impl<E> Clone for Next<E> {
    fn clone(&self) -> Self {
        Next(self.0.clone())
    }
}

impl<E: 'static> Next<E> {
    /// `service` as the rest of the path. Every service on the path is always ready (none
    /// applies back-pressure: waiting is the rate limit's, inside a call).
    pub fn new<S>(service: S) -> Self
    where
        S: tower::Service<Request, Response = Response, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Next(Arc::new(move |req| {
            Box::pin(tower::ServiceExt::oneshot(service.clone(), req))
        }))
    }
}

/// Sends `req` down the rest of the path.
pub fn send<E>(next: &Next<E>, req: Request) -> BoxFuture<Result<Response, E>> {
    (next.0)(req)
}

/// The header that carries the inbound key; never forwarded.
pub const INBOUND_KEY_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-defender-proxy-key");

/// What the layers share across config reloads.
pub struct Shared {
    /// Cached tokens.
    pub tokens: TokenCache,
    /// Rate-limit buckets.
    pub limiter: Limiter,
    /// The request path's metrics.
    pub metrics: Metrics,
    /// The pooled upstream client.
    pub client: upstream::Client,
}

/// The whole request path for the config `rt`, in request order.
pub fn stack(shared: &Arc<Shared>, rt: &Arc<Runtime>) -> Handler {
    let service = ServiceBuilder::new()
        .map_response(|resp: http::Response<_>| resp.map(body::boxed))
        .layer(CatchPanicLayer::custom(rescue::panic_response))
        // Before anything that logs: these values print as `Sensitive`.
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            PROXY_AUTHORIZATION,
            COOKIE,
            INBOUND_KEY_HEADER,
        ]))
        .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
        .map_request({
            let idle = rt.body_timeout;
            move |req| body::from_client(req, idle)
        })
        .layer(connection::ConnectionLayer)
        .layer(request_id::RequestIdLayer)
        .layer(access_log::AccessLogLayer::new(shared, rt))
        .map_response(|resp: http::Response<_>| resp.map(body::boxed))
        .layer(TraceLayer::new_for_http())
        .layer(rescue::RescueLayer)
        .layer(guard::layer(rt))
        .layer(route::layer(rt))
        .layer(headers::HeadersLayer::new(rt))
        .layer(keep_body::KeepBodyLayer::new(rt))
        .layer(rewrite::RewriteLayer::new(rt))
        .layer(ratelimit::RateLimitLayer::new(shared, rt))
        .layer(bearer::BearerLayer::new(shared, rt))
        .service(forward::Forward::new(shared, rt));
    Handler::new(service)
}
