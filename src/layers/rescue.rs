//! The one place where the proxy's own errors become responses: every `ProxyError` returned by
//! the layers below turns into its Defender-shaped answer here, with the request ID as its
//! `target`; a panic anywhere on the path becomes a 500 the same way (via tower-http's
//! catch-panic).

use std::any::Any;
use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{BoxFuture, Request, Response};
use crate::error::ProxyError;

/// Turns `ProxyError` into responses.
#[derive(Debug, Clone, Copy)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue(inner)
    }
}

/// The service of `RescueLayer`.
#[derive(Debug, Clone)]
pub struct Rescue<S>(S);

impl<S> Service<Request> for Rescue<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below are always ready; an error here would have no request to answer.
        match self.0.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let id = req.extensions().get::<RequestId>().cloned();
        Box::pin(self.0.call(req).map(move |answer| {
            Ok(answer.unwrap_or_else(|e| {
                let id = id.as_ref().map_or("-", RequestId::as_str);
                if matches!(e, ProxyError::Internal) {
                    tracing::error!(request_id = id, "internal error");
                }
                e.into_response(id)
            }))
        }))
    }
}

/// The answer to a request whose handling panicked.
pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> http::Response<crate::body::Body> {
    tracing::error!("request handler panicked");
    ProxyError::Internal.into_response("-")
}
