//! A validated config compiled for serving: routes, credential sources, limits and server
//! settings. Swapped whole on reload; requests keep the one they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::cloud::Cloud;
use crate::config::{Config, ConfigError, read_secret};
use crate::ratelimit::{LimitSpec, Limiter};
use crate::routing::Router;
use crate::secret::Secret;
use crate::token::{CredentialSource, build_credential};

/// Host names accepted when `allowed_hosts` is not set.
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// Everything a request needs from the config.
#[derive(Debug)]
pub struct Runtime {
    /// Routes and tenant policies.
    pub router: Router,
    /// Credential sources, by index.
    pub credentials: Vec<Arc<CredentialSource>>,
    /// Header that selects the tenant.
    pub tenant_header: HeaderName,
    /// Accepted Host names, lower case, without port.
    pub allowed_hosts: Vec<String>,
    /// Key clients must present, if any.
    pub inbound_key: Option<Secret>,
    /// Time allowed for the upstream's answer head.
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// A request body that sends nothing for this long is cut off.
    pub body_timeout: Duration,
    /// Log one line per request.
    pub access_log: bool,
    /// Rate limits, in the order routes refer to them.
    pub limits: Vec<LimitSpec>,
    /// The wait budget of a request on a route without a rate limit.
    pub max_wait: Duration,
    /// Fetch the routes' home-tenant tokens in the background at start and on reload.
    pub warm_up: bool,
    /// Named clients; when there are any, every request must carry one's key.
    pub clients: Vec<Client>,
}

/// A `[clients.NAME]`.
#[derive(Debug)]
pub struct Client {
    /// Its name, for the access log.
    pub name: Arc<str>,
    /// The key it sends in `x-defender-proxy-key`.
    pub key: Secret,
    /// The routes it may use (by name); all when `None`.
    pub routes: Option<Vec<String>>,
    /// The methods it may use; any the route allows when `None`.
    pub methods: Option<Vec<http::Method>>,
}

impl Client {
    /// May this client call `method` on `route`?
    pub fn may(&self, route: &str, method: &http::Method) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|r| r.iter().any(|n| n == route))
            && self.methods.as_ref().is_none_or(|m| {
                m.contains(method)
                    || (method == http::Method::HEAD && m.contains(&http::Method::GET))
            })
    }
}

impl Runtime {
    /// Compiles `config` (already validated); reads secret files.
    pub fn build(config: &Config, limiter: &Limiter) -> Result<Runtime, ConfigError> {
        let authority = config.cloud.authority_host.clone().unwrap_or_else(|| {
            Cloud::parse(&config.cloud.name)
                .unwrap_or(Cloud::Public)
                .authority_host()
                .to_string()
        });
        let mut index = HashMap::new();
        let mut credentials = Vec::new();
        for (name, c) in &config.credentials {
            index.insert(name.clone(), credentials.len());
            credentials.push(Arc::new(build_credential(name, c, &authority)?));
        }
        let router = Router::build(config, &index);
        let s = &config.server;
        let inbound_key = read_secret(&s.inbound_key, &s.inbound_key_file, "server.inbound_key")?;
        let allowed_hosts = match &s.allowed_hosts {
            Some(h) => h.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            None => DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        let mut clients = Vec::new();
        for (name, c) in &config.clients {
            let key = read_secret(&c.key, &c.key_file, &format!("clients.{name}.key"))?
                .filter(|k| !k.is_empty())
                .ok_or_else(|| ConfigError::new(format!("clients.{name}.key"), "is empty"))?;
            clients.push(Client {
                name: name.as_str().into(),
                key,
                routes: c.routes.clone(),
                methods: c.methods.as_deref().map(crate::routing::parse_methods),
            });
        }
        Ok(Runtime {
            clients,
            router,
            credentials,
            tenant_header: HeaderName::from_bytes(s.tenant_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                    ConfigError::new("server.tenant_header", "is not a valid header name")
                })?,
            allowed_hosts,
            inbound_key,
            request_timeout: Duration::from_secs(s.request_timeout_secs),
            max_body_bytes: s.max_request_body_bytes,
            body_timeout: Duration::from_secs(s.body_timeout_secs),
            access_log: config.log.access_log,
            limits: config
                .rate_limit
                .iter()
                .map(|(name, c)| limiter.spec(name, c))
                .collect(),
            max_wait: Duration::from_secs(s.max_wait_secs),
            warm_up: s.warm_up,
        })
    }
}
