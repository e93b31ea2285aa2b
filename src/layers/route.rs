//! Route and tenant: the route is the longest path prefix that matches; the tenant is the one
//! the route pins, else the tenant header's (a GUID or an alias of the route's credential),
//! else the credential's home tenant. Both go into the request's extensions as `Routed`.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::access_log::Trace;
use super::guard::ClientName;
use super::{Request, Response};
use crate::error::ProxyError;
use crate::routing::{Route, Tenant, path_of};
use crate::runtime::Runtime;

/// Where a request goes, in its extensions.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The route's index in `Router::routes`.
    pub index: usize,
    /// The tenant the request is for.
    pub tenant: Tenant,
}

impl Routed {
    /// The request's route in `rt`.
    pub fn route<'r>(&self, rt: &'r Runtime) -> &'r Route {
        &rt.router.routes()[self.index]
    }

    /// The `Routed` of `req`; every request below the route layer has one.
    pub fn of(req: &Request) -> Result<Routed, ProxyError> {
        req.extensions()
            .get::<Routed>()
            .cloned()
            .ok_or(ProxyError::Internal)
    }
}

/// Finds the route and tenant; see the module doc.
#[derive(Clone)]
pub struct RouteLayer(Arc<Runtime>);

impl RouteLayer {
    /// The routes of config `rt`.
    pub fn new(rt: &Arc<Runtime>) -> Self {
        RouteLayer(rt.clone())
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = FindRoute<S>;
    fn layer(&self, inner: S) -> FindRoute<S> {
        FindRoute {
            inner,
            rt: self.0.clone(),
        }
    }
}

/// The service of `RouteLayer`.
#[derive(Clone)]
pub struct FindRoute<S> {
    inner: S,
    rt: Arc<Runtime>,
}

impl<S> Service<Request> for FindRoute<S>
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
        match resolve(&self.rt, &req) {
            Ok(routed) => {
                req.extensions_mut().insert(routed);
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}

fn resolve(rt: &Runtime, req: &Request) -> Result<Routed, ProxyError> {
    let (index, route) = rt.router.route(path_of(req.uri()))?;
    let trace = req.extensions().get::<Trace>();
    if let Some(trace) = trace {
        trace.set_route(index);
    }
    check_method(rt, route, req)?;
    let mut values = req.headers().get_all(&rt.tenant_header).iter();
    let header = values.next();
    if values.next().is_some() {
        // Two tenant headers: which one the client meant cannot be told.
        return Err(ProxyError::BadTenant);
    }
    let tenant = rt
        .router
        .tenant(route, header.map(|v| v.as_bytes()))?
        .into_owned();
    if let Some(trace) = trace {
        trace.set_tenant(&tenant);
    }
    Ok(Routed { index, tenant })
}

/// The route must forward the method, and the calling client (if clients are configured)
/// must be granted the route and the method.
fn check_method(rt: &Runtime, route: &Route, req: &Request) -> Result<(), ProxyError> {
    if !route.allows(req.method()) {
        return Err(ProxyError::MethodNotAllowed {
            allow: route.allow_header().into(),
        });
    }
    let client = req
        .extensions()
        .get::<ClientName>()
        .and_then(|c| rt.clients.get(c.index));
    match client {
        Some(c) if !c.may(&route.name, req.method()) => Err(ProxyError::ClientNotAllowed),
        _ => Ok(()),
    }
}
