//! Request → route (longest path prefix) and tenant (pinned by the route, else the tenant
//! header as a GUID or alias, else the credential's home tenant).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::uri::{Authority, Scheme};

use crate::cloud::{Cloud, Service};
use crate::config::{Config, CredentialConfig, RouteConfig, is_guid, is_tenant_name};
use crate::error::ProxyError;
use crate::rewrite::LinkRewriter;

/// The tenant name of the credential's own tenant, in the header, the path, logs and metrics.
pub const HOME: &str = "home";

/// The first segment of the tenant-scoped form of a URL: `/tenants/{alias-or-guid}/<path>`.
pub const TENANTS_SEGMENT: &str = "/tenants/";

/// A tenant a request is for: the ID sent to Entra and a bounded label for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// GUID (lower case) or domain.
    pub id: Arc<str>,
    /// Alias, `home` for the credential's own tenant, or `*` for an unlisted GUID.
    pub label: Arc<str>,
}

/// Which tenants a credential may act for.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    home: Option<Tenant>,
    /// Lower-case alias → tenant.
    aliases: HashMap<String, Tenant>,
    /// Lower-case GUID → tenant, for GUIDs listed under an alias.
    by_guid: HashMap<String, Tenant>,
    any_guid: bool,
}

impl TenantPolicy {
    /// The policy of a credential's `tenant_id` and `tenants` table.
    pub fn from_config(c: &CredentialConfig) -> Self {
        let mut policy = TenantPolicy::default();
        if c.kind == crate::config::CredentialType::ManagedIdentity {
            // The identity's own tenant: the endpoint takes none.
            policy.home = Some(Tenant {
                id: "managed-identity".into(),
                label: "home".into(),
            });
        }
        if let Some(home) = &c.tenant_id {
            let id: Arc<str> = home.to_ascii_lowercase().into();
            let t = Tenant {
                id: id.clone(),
                label: "home".into(),
            };
            policy.by_guid.insert(id.to_string(), t.clone());
            policy.home = Some(t);
        }
        for (alias, guid) in &c.tenants {
            if guid == "*" {
                policy.any_guid = true;
                continue;
            }
            let t = Tenant {
                id: guid.to_ascii_lowercase().into(),
                label: alias.as_str().into(),
            };
            policy.by_guid.insert(guid.to_ascii_lowercase(), t.clone());
            policy.aliases.insert(alias.to_ascii_lowercase(), t);
        }
        policy
    }

    /// Resolves a tenant named by a route pin or a header value.
    pub fn resolve(&self, name: &str) -> Result<Cow<'_, Tenant>, ProxyError> {
        let name = name.trim_matches([' ', '\t']);
        if !is_tenant_name(name) {
            return Err(ProxyError::BadTenant);
        }
        let lower = name.to_ascii_lowercase();
        if let Some(t) = self
            .aliases
            .get(&lower)
            .or_else(|| self.by_guid.get(&lower))
        {
            return Ok(Cow::Borrowed(t));
        }
        if lower == HOME {
            // The name logs and metrics give the credential's own tenant.
            return self
                .home()
                .map(Cow::Borrowed)
                .ok_or(ProxyError::TenantNotAllowed);
        }
        if self.any_guid && is_guid(&lower) {
            return Ok(Cow::Owned(Tenant {
                id: lower.into(),
                label: "*".into(),
            }));
        }
        Err(ProxyError::TenantNotAllowed)
    }

    /// The credential's own tenant.
    pub fn home(&self) -> Option<&Tenant> {
        self.home.as_ref()
    }
}

/// Where a route sends its requests.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `https`, or `http` for loopback.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// Path prepended to every forwarded path, without trailing slash.
    pub base_path: String,
    /// Origin for logs: `https://host`.
    pub origin: String,
}

impl Upstream {
    fn parse(url: &str) -> Option<Upstream> {
        let uri: http::Uri = url.parse().ok()?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        let scheme = uri.scheme()?.clone();
        let authority = uri.authority()?.clone();
        Some(Upstream {
            origin: format!("{scheme}://{authority}"),
            scheme,
            authority,
            base_path,
        })
    }
}

/// A compiled `[[route]]`.
#[derive(Debug)]
pub struct Route {
    /// Name for logs and metrics.
    pub name: Arc<str>,
    /// Prefix without trailing slash (`""` for `/`).
    prefix: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Target.
    pub upstream: Upstream,
    /// OAuth scope.
    pub scope: Arc<str>,
    /// Index of the credential.
    pub credential: usize,
    /// Tenant pinned by the route.
    pub pinned: Option<Tenant>,
    /// Index of the rate limit.
    pub rate_limit: Option<usize>,
    /// Rewrite paging links and `Location` back to the proxy.
    pub rewrite_links: bool,
    /// Wait and retry after an upstream 429/503 instead of passing it on.
    pub retry_throttled: bool,
    /// The methods the route forwards; any when `None`.
    pub methods: Option<Vec<http::Method>>,
}

impl Route {
    /// True when `path` is the prefix or below it (on a segment boundary).
    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// The path to forward: the prefix removed when asked, the upstream's base path added.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        let rest = if self.strip_prefix {
            &path[self.prefix.len()..]
        } else {
            path
        };
        let rest = if rest.is_empty() { "/" } else { rest };
        if self.upstream.base_path.is_empty() {
            std::borrow::Cow::Borrowed(rest)
        } else {
            std::borrow::Cow::Owned(format!("{}{rest}", self.upstream.base_path))
        }
    }

    /// Whether the route forwards `method`. HEAD goes with GET (RFC 9110 §9.3.2).
    pub fn allows(&self, method: &http::Method) -> bool {
        self.methods.as_ref().is_none_or(|allowed| {
            allowed.contains(method)
                || (method == http::Method::HEAD && allowed.contains(&http::Method::GET))
        })
    }

    /// The `Allow` header of a refusal: the route's methods.
    pub fn allow_header(&self) -> String {
        self.methods
            .iter()
            .flatten()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The configured prefix as a client sees it, for link rewriting and logs.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Rewrites upstream links to the proxy at `host` (the request's validated Host), in the
    /// tenant-scoped form `/tenants/{tenant}/...` when `tenant` is given.
    pub fn link_rewriter(&self, host: &str, tenant: Option<&str>) -> LinkRewriter {
        let upstream = format!("{}{}", self.upstream.origin, self.upstream.base_path);
        let client_prefix = if self.strip_prefix {
            self.prefix.as_str()
        } else {
            ""
        };
        let scope = tenant.map_or(String::new(), |t| format!("{TENANTS_SEGMENT}{t}"));
        LinkRewriter::new(&upstream, &format!("http://{host}{scope}{client_prefix}"))
    }
}

/// All routes, longest prefix first, and the credentials' tenant policies.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    policies: Vec<TenantPolicy>,
}

impl Router {
    /// Compiles a validated config; `credentials` gives each credential's index.
    pub fn build(config: &Config, credential_index: &HashMap<String, usize>) -> Router {
        let cloud = Cloud::parse(&config.cloud.name).unwrap_or(Cloud::Public);
        let mut policies = vec![TenantPolicy::default(); credential_index.len()];
        for (name, c) in &config.credentials {
            if let Some(&i) = credential_index.get(name) {
                policies[i] = TenantPolicy::from_config(c);
            }
        }
        let limits: Vec<&String> = config.rate_limit.keys().collect();
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .filter_map(|r| compile_route(r, cloud, credential_index, &policies, &limits))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router { routes, policies }
    }

    /// The route for `path` and its index in `routes()`.
    pub fn route(&self, path: &str) -> Result<(usize, &Route), ProxyError> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(path))
            .ok_or(ProxyError::NoRoute)
    }

    /// The tenant for a request on `route` carrying `header` (the tenant header, if any).
    pub fn tenant<'a>(
        &'a self,
        route: &'a Route,
        header: Option<&[u8]>,
    ) -> Result<Cow<'a, Tenant>, ProxyError> {
        if let Some(t) = &route.pinned {
            return Ok(Cow::Borrowed(t));
        }
        let policy = &self.policies[route.credential];
        match header {
            Some(v) => policy.resolve(visible(v).ok_or(ProxyError::BadTenant)?),
            None => policy
                .home()
                .map(Cow::Borrowed)
                .ok_or(ProxyError::BadTenant),
        }
    }

    /// The tenant for a request on `route` whose tenant header is `header` and whose
    /// tenant-scoped path names `path`. The two must name the same tenant, and a pinned route's
    /// tenant, or the request is refused with `TenantConflict` rather than one chosen silently.
    pub fn scoped_tenant<'a>(
        &'a self,
        route: &'a Route,
        header: Option<&[u8]>,
        path: Option<&str>,
    ) -> Result<Cow<'a, Tenant>, ProxyError> {
        let Some(name) = path else {
            return self.tenant(route, header);
        };
        let policy = &self.policies[route.credential];
        let from_path = policy.resolve(name)?;
        if let Some(h) = header {
            let from_header = policy.resolve(visible(h).ok_or(ProxyError::BadTenant)?)?;
            if from_header.id != from_path.id {
                return Err(ProxyError::TenantConflict);
            }
        }
        match &route.pinned {
            Some(pinned) if pinned.id != from_path.id => Err(ProxyError::TenantConflict),
            _ => Ok(from_path),
        }
    }

    /// A bounded label for a tenant ID: its alias, `home`, or `*`.
    pub fn tenant_label(&self, id: &str) -> Arc<str> {
        self.policies
            .iter()
            .find_map(|p| p.by_guid.get(id).map(|t| t.label.clone()))
            .unwrap_or_else(|| "*".into())
    }

    /// The tenants a credential names: home first, then aliases.
    pub fn named_tenants(&self, credential: usize) -> Vec<Tenant> {
        let p = &self.policies[credential];
        let mut out: Vec<Tenant> = p.home.iter().cloned().collect();
        let mut aliases: Vec<&Tenant> = p.aliases.values().collect();
        aliases.sort_by(|a, b| a.label.cmp(&b.label));
        out.extend(
            aliases
                .into_iter()
                .filter(|t| Some(&t.id) != p.home.as_ref().map(|h| &h.id))
                .cloned(),
        );
        out
    }

    /// True when the credential admits any tenant GUID.
    pub fn admits_any_guid(&self, credential: usize) -> bool {
        self.policies[credential].any_guid
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Validated method names as methods.
pub fn parse_methods(names: &[String]) -> Vec<http::Method> {
    names
        .iter()
        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .collect()
}

/// `bytes` as text when all of it is visible ASCII, spaces or tabs (RFC 9110 §5.5).
fn visible(bytes: &[u8]) -> Option<&str> {
    bytes
        .iter()
        .all(|b| matches!(b, b'\t' | b' '..=b'~'))
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
}

/// Splits a tenant-scoped path `/tenants/{tenant}/<path>` into the tenant and the path the
/// routes see (`/` when nothing follows the tenant). `None` for any other path.
pub fn split_tenant_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(TENANTS_SEGMENT)?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// The name of `tenant` in a tenant-scoped URL: its alias (or `home`), else its GUID.
pub fn tenant_path_name(tenant: &Tenant) -> &str {
    if &*tenant.label == "*" {
        &tenant.id
    } else {
        &tenant.label
    }
}

/// A request's path; an empty one (an absolute-form target such as `http://host?q`) is `/`.
pub fn path_of(uri: &http::Uri) -> &str {
    match uri.path() {
        "" => "/",
        path => path,
    }
}

fn compile_route(
    r: &RouteConfig,
    cloud: Cloud,
    credential_index: &HashMap<String, usize>,
    policies: &[TenantPolicy],
    limits: &[&String],
) -> Option<Route> {
    let (url, default_scope) = match Service::parse(&r.upstream) {
        Some(s) => cloud.service(s, r.region.as_deref())?,
        None => (r.upstream.clone(), String::new()),
    };
    let credential = *credential_index.get(&r.credential)?;
    let pinned = r
        .tenant
        .as_deref()
        .and_then(|t| policies[credential].resolve(t).ok())
        .map(Cow::into_owned);
    Some(Route {
        name: r.name.as_str().into(),
        prefix: r.prefix.trim_end_matches('/').to_string(),
        strip_prefix: r.strip_prefix,
        upstream: Upstream::parse(&url)?,
        scope: r.scope.clone().unwrap_or(default_scope).into(),
        credential,
        pinned,
        rate_limit: r
            .rate_limit
            .as_ref()
            .and_then(|l| limits.iter().position(|n| *n == l)),
        rewrite_links: r.rewrite_links,
        retry_throttled: r.retry_throttled,
        methods: r.methods.as_deref().map(parse_methods),
    })
}

#[cfg(test)]
mod tests;
