//! Route and tenant: the route is the longest path prefix that matches; the tenant is the one
//! the route pins, else the tenant-scoped path's or the tenant header's (a GUID, an alias of the
//! route's credential, or `home`), else the credential's home tenant. Both go into the
//! request's extensions as `Routed`. A tenant-scoped path, `/tenants/{tenant}/<path>`, loses
//! its first two segments here, before routing; when it and the header name different tenants
//! the request is refused.

use std::sync::Arc;

use super::Request;
use super::access_log::Trace;
use super::check::CheckLayer;
use super::guard::ClientName;
use crate::error::ProxyError;
use crate::routing::{Route, Tenant, path_of, split_tenant_path, tenant_path_name};
use crate::runtime::Runtime;

/// Where a request goes, in its extensions.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The route's index in `Router::routes`.
    pub index: usize,
    /// The tenant the request is for.
    pub tenant: Tenant,
    /// The tenant's name in tenant-scoped links, when the header or the path chose it: links
    /// the upstream returns then lead back to the same tenant without the header.
    pub link_tenant: Option<Arc<str>>,
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
pub fn layer(rt: &Arc<Runtime>) -> CheckLayer {
    CheckLayer::new(rt, find)
}

/// Takes the tenant out of a tenant-scoped path, then notes the route and tenant in the
/// request's extensions.
fn find(rt: &Runtime, req: &mut Request) -> Result<(), ProxyError> {
    let path_tenant = unscope(req)?;
    let routed = resolve(rt, req, path_tenant.as_deref())?;
    req.extensions_mut().insert(routed);
    Ok(())
}

/// Turns a tenant-scoped request target into the plain one, returning the path's tenant.
fn unscope(req: &mut Request) -> Result<Option<String>, ProxyError> {
    let Some((tenant, rest)) = split_tenant_path(path_of(req.uri())) else {
        return Ok(None);
    };
    let tenant = tenant.to_string();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| ProxyError::BadRequest("tenant-scoped path"))?,
    );
    *req.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("tenant-scoped path"))?;
    Ok(Some(tenant))
}

fn resolve(rt: &Runtime, req: &Request, path_tenant: Option<&str>) -> Result<Routed, ProxyError> {
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
        .scoped_tenant(route, header.map(|v| v.as_bytes()), path_tenant)?
        .into_owned();
    if let Some(trace) = trace {
        trace.set_tenant(&tenant);
    }
    let chosen = path_tenant.is_some() || (header.is_some() && route.pinned.is_none());
    let link_tenant = chosen.then(|| tenant_path_name(&tenant).into());
    Ok(Routed {
        index,
        tenant,
        link_tenant,
    })
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
