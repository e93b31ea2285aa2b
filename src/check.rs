//! `defender-proxy check`: a redacted summary of the config and the effective routes, and with
//! `--live` one token fetch per credential, tenant and scope.

use std::fmt::Write;

use crate::AppState;
use crate::config::Config;
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
        config
            .cloud
            .authority_host
            .as_deref()
            .unwrap_or("(cloud default)")
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
