//! `Connection: close` on an HTTP/1 answer given before the client's request body was read,
//! when the rest is not drained (`body::from_client`): the unread bytes cannot be told from a
//! next request, so the connection ends after this answer, and the client is told so
//! (RFC 9112 §9.6).

use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::Map;
use http::{HeaderValue, Version, header};
use tower::{Layer, Service};

use super::{Request, Response};
use crate::body::Abandoned;

/// See the module doc.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLayer;

impl<S> Layer<S> for ConnectionLayer {
    type Service = CloseWhenAbandoned<S>;
    fn layer(&self, inner: S) -> CloseWhenAbandoned<S> {
        CloseWhenAbandoned(inner)
    }
}

/// The service of `ConnectionLayer`.
#[derive(Debug, Clone)]
pub struct CloseWhenAbandoned<S>(S);

type Closing<F, E> = Map<F, Box<dyn FnOnce(Result<Response, E>) -> Result<Response, E> + Send>>;

impl<S> Service<Request> for CloseWhenAbandoned<S>
where
    S: Service<Request, Response = Response>,
    S::Error: 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Closing<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // HTTP/2 ends a stream, not the connection: nothing to say there.
        let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
        let abandoned = req
            .extensions()
            .get::<Abandoned>()
            .cloned()
            .filter(|_| http1);
        self.0.call(req).map(Box::new(move |result| {
            result.map(|mut resp| {
                if abandoned.is_some_and(|a| a.get()) {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            })
        }))
    }
}
