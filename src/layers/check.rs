//! A policy step that only looks at the request: it refuses it with a `ProxyError`, or notes
//! what it learned in the request's extensions and passes it on, without waiting. The guard
//! and the route-and-tenant step are two such steps.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::{Request, Response};
use crate::error::ProxyError;
use crate::runtime::Runtime;

/// What a step does with a request under config `rt`.
pub type Step = fn(&Runtime, &mut Request) -> Result<(), ProxyError>;

/// Runs `step` on each request; see the module doc.
#[derive(Clone)]
pub struct CheckLayer {
    rt: Arc<Runtime>,
    step: Step,
}

impl CheckLayer {
    /// `step` under config `rt`.
    pub fn new(rt: &Arc<Runtime>, step: Step) -> Self {
        CheckLayer {
            rt: rt.clone(),
            step,
        }
    }
}

impl<S> Layer<S> for CheckLayer {
    type Service = Check<S>;
    fn layer(&self, inner: S) -> Check<S> {
        Check {
            inner,
            rt: self.rt.clone(),
            step: self.step,
        }
    }
}

/// The service of `CheckLayer`.
#[derive(Clone)]
pub struct Check<S> {
    inner: S,
    rt: Arc<Runtime>,
    step: Step,
}

impl<S> Service<Request> for Check<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Either<Ready<Result<Response, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match (self.step)(&self.rt, &mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}
