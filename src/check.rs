//! `defender-proxy check`: a redacted summary of the config and the effective routes, and with
//! `--live` one token fetch per credential, tenant and scope.

use std::fmt::Write;

use crate::AppState;
use crate::cloud::Cloud;
use crate::config::{Config, ConfigError, StoreType};
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
        let secret_from = if cfg.client_secret_file.is_some() {
            "file"
        } else {
            "config/env"
        };
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
            "  {:<12} {:<14} client_id={}  secret=*** ({secret_from})  tenants: {}",
            c.name,
            cfg.kind.as_str(),
            cfg.client_id.as_deref().unwrap_or("-"),
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
        let _ = writeln!(
            out,
            "  {prefix:<16} -> {}{}{strip}\n  {:<16}    route={} scope={} credential={cred} tenant={tenant} limit={limit}",
            r.upstream.origin, r.upstream.base_path, "", r.name, r.scope
        );
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
        Some(t) => {
            let guid = c.tenants.get(t).filter(|g| *g != "*").cloned();
            vec![(t.to_string(), guid.unwrap_or_else(|| t.to_string()))]
        }
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
                format!("{authority}/{t}/adminconsent?client_id={client_id}"),
            )
        })
        .collect())
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
