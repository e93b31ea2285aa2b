//! `defender-proxy check`: a redacted summary of the config and the effective routes, and with
//! `--live` one token fetch per credential, tenant and scope.

use std::fmt::Write;

use crate::AppState;
use crate::cloud::Cloud;
use crate::config::{
    Config, ConfigError, CredentialConfig, CredentialType, StoreType, is_guid, is_tenant_name,
};
use crate::ratelimit::RedisStore;
use crate::token::TokenKey;

/// The redacted summary: listeners, credentials (never a secret) and routes.
pub fn summary(config: &Config, state: &AppState) -> String {
    let rt = state.runtime.load();
    let s = &config.server;
    let mut out = String::new();
    let admin = if s.admin_listen.is_empty() {
        "off"
    } else {
        &s.admin_listen
    };
    let _ = writeln!(
        out,
        "listen {}  admin {}  tenant header {}",
        s.listen, admin, s.tenant_header
    );
    let _ = writeln!(
        out,
        "cloud {}  authority {}",
        config.cloud.name,
        authority_host(config)
    );
    let _ = writeln!(out, "\ncredentials:");
    for (i, c) in rt.credentials.iter().enumerate() {
        let cfg = &config.credentials[&*c.name];
        let mut tenants: Vec<String> = rt
            .router
            .named_tenants(i)
            .iter()
            .map(|t| format!("{} ({})", t.label, t.id))
            .collect();
        if rt.router.admits_any_guid(i) {
            tenants.push("any GUID".into());
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<14} client_id={}  {}tenants: {}",
            c.name,
            cfg.kind.as_str(),
            cfg.client_id.as_deref().unwrap_or("-"),
            proof(cfg),
            tenants.join(", ")
        );
    }
    let _ = writeln!(out, "\nrate limit store: {}", store_line(config));
    let _ = writeln!(out, "\nroutes (longest prefix first):");
    for r in rt.router.routes() {
        let cred = &rt.credentials[r.credential].name;
        let tenant = match &r.pinned {
            Some(t) => format!("pinned {} ({})", t.label, t.id),
            None => "tenant header, else home".into(),
        };
        let limit = r
            .rate_limit
            .and_then(|i| config.rate_limit.keys().nth(i))
            .map_or("-", |s| s.as_str());
        let prefix = if r.prefix().is_empty() {
            "/"
        } else {
            r.prefix()
        };
        let strip = if r.strip_prefix {
            " (prefix stripped)"
        } else {
            ""
        };
        let methods = match &r.methods {
            Some(_) => r.allow_header(),
            None => "any".into(),
        };
        let _ = writeln!(
            out,
            "  {prefix:<16} -> {}{}{strip}\n  {:<16}    route={} scope={} credential={cred} tenant={tenant} limit={limit} methods={methods}",
            r.upstream.origin, r.upstream.base_path, "", r.name, r.scope
        );
    }
    if !rt.clients.is_empty() {
        let _ = writeln!(out, "\nclients (each request needs one's key):");
        for (name, c) in &config.clients {
            let key_from = if c.key_file.is_some() {
                "file"
            } else {
                "config/env"
            };
            let routes = c.routes.as_ref().map_or("all".into(), |r| r.join(", "));
            let methods = c.methods.as_ref().map_or("any".into(), |m| m.join(", "));
            let _ = writeln!(
                out,
                "  {name:<12} key=*** ({key_from})  routes: {routes}  methods: {methods}"
            );
        }
    }
    let warnings = warnings(config);
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    out
}

/// `[rate_limit_store]` in one line; the password shows as `***` and where it comes from.
fn store_line(config: &Config) -> String {
    let s = &config.rate_limit_store;
    if s.kind == StoreType::Local {
        return "local (this process only)".into();
    }
    let password = match (&s.password, &s.password_file) {
        (Some(p), _) => format!("{p} (config/env)"),
        (None, Some(f)) => format!("*** (file {})", f.display()),
        (None, None) => "none".into(),
    };
    format!(
        "redis {}  user={}  password={password}  key_prefix={:?}  timeout_ms={}  replicas_hint={}",
        s.url.as_deref().unwrap_or("-"),
        s.username.as_deref().unwrap_or("default"),
        s.key_prefix,
        s.timeout_ms,
        s.replicas_hint
    )
}

/// `check --live` for the store: `None` when it is local, else `PING`'s outcome.
pub async fn live_store(config: &Config) -> Option<Result<(), String>> {
    let s = &config.rate_limit_store;
    match s.kind {
        StoreType::Local => None,
        StoreType::Redis => Some(RedisStore::ping(s).await),
    }
}

/// What a credential proves itself with, redacted: `secret=*** (file)`, a certificate's path,
/// or nothing for a managed identity (Azure holds its secret).
fn proof(c: &CredentialConfig) -> String {
    let from = |file: &Option<std::path::PathBuf>| match file {
        Some(_) => "file",
        None => "config/env",
    };
    let path =
        |p: &Option<std::path::PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
    match c.kind {
        CredentialType::ClientSecret => format!("secret=*** ({})  ", from(&c.client_secret_file)),
        CredentialType::Password => format!("password=*** ({})  ", from(&c.password_file)),
        CredentialType::ClientCertificate => format!("certificate={}  ", path(&c.certificate)),
        CredentialType::WorkloadIdentity => format!("token_file={}  ", path(&c.token_file)),
        CredentialType::DeviceCode => format!("token_store={}  ", path(&c.token_store)),
        CredentialType::ManagedIdentity => String::new(),
    }
}

/// Settings that are valid but break a promise: a limit whose wait budget is shorter than its
/// per-minute window refuses a burst beyond the quota at once instead of queueing it.
pub fn warnings(config: &Config) -> Vec<String> {
    config
        .rate_limit
        .iter()
        .filter(|(_, l)| l.per_minute.is_some() && l.max_wait_secs() < 60)
        .map(|(name, l)| {
            format!(
                "rate_limit.{name}.max_wait_secs = {} is shorter than its per-minute window \
                 (60 s): a burst beyond per_minute gets 429 at once instead of queueing",
                l.max_wait_secs()
            )
        })
        .collect()
}

/// One line of `check --live`.
pub struct LiveRow {
    /// Credential name.
    pub credential: String,
    /// Tenant label and ID.
    pub tenant: String,
    /// Scope.
    pub scope: String,
    /// `ok` or the reason (AADSTS code and meaning).
    pub outcome: Result<(), String>,
}

/// Fetches one token per credential, named tenant and scope used by a route.
pub async fn live(state: &AppState) -> Vec<LiveRow> {
    let rt = state.runtime.load_full();
    let mut rows = Vec::new();
    for (i, source) in rt.credentials.iter().enumerate() {
        let mut scopes: Vec<_> = rt
            .router
            .routes()
            .iter()
            .filter(|r| r.credential == i)
            .map(|r| r.scope.clone())
            .collect();
        scopes.sort();
        scopes.dedup();
        for tenant in rt.router.named_tenants(i) {
            for scope in &scopes {
                let key = TokenKey {
                    credential: source.id,
                    tenant: tenant.id.clone(),
                    scope: scope.clone(),
                };
                let outcome = state
                    .shared
                    .tokens
                    .get(source, &key)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                rows.push(LiveRow {
                    credential: source.name.to_string(),
                    tenant: format!("{} ({})", tenant.label, tenant.id),
                    scope: scope.to_string(),
                    outcome,
                });
            }
        }
    }
    rows
}

/// `consent-url`: the admin-consent links of `credential`, one per tenant: `tenant` when given
/// (alias or GUID), else every alias of its `tenants` table (partner context), else its home
/// tenant; a `"*"` entry adds a link any organization's admin can use. Each link grants the
/// API permissions configured on the app registration.
pub fn consent_urls(
    config: &Config,
    credential: &str,
    tenant: Option<&str>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let path = "--credential";
    let c = config
        .credentials
        .get(credential)
        .ok_or_else(|| ConfigError::new(path, format!("no credential named {credential:?}")))?;
    let client_id = c
        .client_id
        .as_deref()
        .ok_or_else(|| ConfigError::new(path, "this credential has no client_id"))?;
    let authority = authority_host(config);
    let mut targets: Vec<(String, String)> = match tenant {
        Some(t) => vec![(t.to_string(), consent_tenant(c, t)?)],
        None => c
            .tenants
            .iter()
            .filter(|(_, g)| *g != "*")
            .map(|(a, g)| (a.clone(), g.clone()))
            .collect(),
    };
    if tenant.is_none() && c.tenants.values().any(|g| g == "*") {
        targets.push(("any organization".into(), "organizations".into()));
    }
    if targets.is_empty() {
        let home = c
            .tenant_id
            .clone()
            .ok_or_else(|| ConfigError::new(path, "this credential has no tenant_id"))?;
        targets.push(("home".into(), home));
    }
    Ok(targets
        .into_iter()
        .map(|(label, t)| {
            (
                format!("{label} ({t})"),
                format!(
                    "{authority}/{}/adminconsent?client_id={}",
                    encode(&t),
                    encode(client_id)
                ),
            )
        })
        .collect())
}

/// The tenant `--tenant` names: an alias of the credential's `tenants` table (any case), else
/// a tenant GUID or a domain name. Anything else is most likely a typo of an alias, and a
/// link for it would only fail in the browser.
fn consent_tenant(c: &CredentialConfig, tenant: &str) -> Result<String, ConfigError> {
    let alias = c
        .tenants
        .iter()
        .find(|(a, g)| a.eq_ignore_ascii_case(tenant) && *g != "*");
    if let Some((_, guid)) = alias {
        return Ok(guid.clone());
    }
    if is_guid(tenant) || (tenant.contains('.') && is_tenant_name(tenant)) {
        return Ok(tenant.to_string());
    }
    let known: Vec<&str> = c
        .tenants
        .iter()
        .filter(|(_, g)| *g != "*")
        .map(|(a, _)| a.as_str())
        .collect();
    let known = match known.as_slice() {
        [] => "the credential has no tenants table".to_string(),
        names => format!("known aliases: {}", names.join(", ")),
    };
    Err(ConfigError::new(
        "--tenant",
        format!(
            "{tenant:?} is not an alias of this credential, a tenant GUID or a domain ({known})"
        ),
    ))
}

/// Percent-encodes all but RFC 3986's unreserved characters (§2.3), for a URL path segment or
/// query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Entra ID authority in effect: `[cloud] authority_host` (or `AZURE_AUTHORITY_HOST`), else
/// the named cloud's, without a trailing slash.
fn authority_host(config: &Config) -> String {
    config
        .cloud
        .authority_host
        .clone()
        .unwrap_or_else(|| {
            Cloud::parse(&config.cloud.name)
                .unwrap_or(Cloud::Public)
                .authority_host()
                .to_string()
        })
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_budget_shorter_than_the_minute_window_is_warned_about() {
        let text = |max_wait: &str| {
            format!(
                "[credentials.app]\ntype = \"client_secret\"\n\
                 tenant_id = \"11111111-1111-1111-1111-111111111111\"\n\
                 client_id = \"c\"\nclient_secret = \"s\"\n\
                 [[route]]\nname = \"d\"\nprefix = \"/\"\nupstream = \"xdr\"\n\
                 credential = \"app\"\nrate_limit = \"mde\"\n\
                 [rate_limit.mde]\nper_minute = 100\n{max_wait}"
            )
        };
        let config = |t: String| Config::from_toml(&t, &|_: &str| None).unwrap();
        let w = warnings(&config(text("max_wait_secs = 30\n")));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("rate_limit.mde.max_wait_secs = 30 "),
            "{}",
            w[0]
        );
        assert!(warnings(&config(text(""))).is_empty());
        assert!(warnings(&config(text("max_wait_secs = 60\n"))).is_empty());
    }
}
