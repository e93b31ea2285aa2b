//! Cross-field rules of `proxy.toml`, checked after parsing and before any socket is bound.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::{Config, ConfigError, CredentialConfig, CredentialType, Env, RouteConfig};
use crate::cloud::{self, Cloud, Service};

/// Fills unset values from the azure-identity environment variables.
pub(super) fn apply_env_fallbacks(config: &mut Config, env: &dyn Env) {
    let var = |name: &str| env.var(name).filter(|v| !v.is_empty());
    if config.cloud.authority_host.is_none() {
        config.cloud.authority_host = var("AZURE_AUTHORITY_HOST");
    }
    for c in config.credentials.values_mut() {
        if matches!(
            c.kind,
            CredentialType::ClientSecret | CredentialType::WorkloadIdentity
        ) {
            c.tenant_id = c.tenant_id.take().or_else(|| var("AZURE_TENANT_ID"));
            c.client_id = c.client_id.take().or_else(|| var("AZURE_CLIENT_ID"));
        }
        if c.kind == CredentialType::ClientSecret
            && c.client_secret.is_none()
            && c.client_secret_file.is_none()
        {
            c.client_secret = var("AZURE_CLIENT_SECRET").map(crate::secret::Secret::new);
        }
        if c.kind == CredentialType::ClientCertificate && c.certificate.is_none() {
            c.certificate = var("AZURE_CLIENT_CERTIFICATE_PATH").map(std::path::PathBuf::from);
            if c.certificate_password.is_none() && c.certificate_password_file.is_none() {
                c.certificate_password =
                    var("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(crate::secret::Secret::new);
            }
        }
        if c.kind == CredentialType::WorkloadIdentity && c.token_file.is_none() {
            c.token_file = var("AZURE_FEDERATED_TOKEN_FILE").map(std::path::PathBuf::from);
        }
    }
}

/// Checks every rule; the first broken one is returned.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_server(config)?;
    let cloud = Cloud::parse(&config.cloud.name).ok_or_else(|| {
        ConfigError::new(
            "cloud.name",
            "must be one of public, gcc, gcc-high, dod, china",
        )
    })?;
    if let Some(host) = &config.cloud.authority_host {
        check_url(host, "cloud.authority_host", false)?;
    }
    for (name, c) in &config.credentials {
        validate_credential(name, c)?;
    }
    for (name, l) in &config.rate_limit {
        let path = format!("rate_limit.{name}");
        if l.per_minute.is_none() && l.per_hour.is_none() {
            return Err(ConfigError::new(path, "set per_minute, per_hour or both"));
        }
        if l.per_minute == Some(0) || l.per_hour == Some(0) {
            return Err(ConfigError::new(path, "limits must be at least 1"));
        }
    }
    if config.routes.is_empty() {
        return Err(ConfigError::new(
            "route",
            "the config defines no route: add a [[route]] table (the shipped proxy.toml has one per API)",
        ));
    }
    validate_store(&config.rate_limit_store)?;
    let mut prefixes = HashSet::new();
    let mut names = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let path = format!("route[{i}]");
        if !names.insert(r.name.as_str()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        // Routing ignores a trailing slash: `/mde` and `/mde/` are one prefix.
        if !prefixes.insert(r.prefix.trim_end_matches('/')) {
            return Err(ConfigError::new(
                format!("{path}.prefix"),
                format!("duplicate prefix {:?}", r.prefix),
            ));
        }
        validate_route(config, cloud, r, &path)?;
    }
    super::access::validate(config)
}

fn validate_server(config: &Config) -> Result<(), ConfigError> {
    if config.server.workers > 256 {
        return Err(ConfigError::new(
            "server.workers",
            "must be 0 (one per core) to 256",
        ));
    }
    let s = &config.server;
    if s.runtime == super::ServerRuntime::PerCore
        && s.listen.starts_with(super::access::UNIX_PREFIX)
    {
        return Err(ConfigError::new(
            "server.runtime",
            "per-core serves a TCP listener; a unix: socket is served by the multi-thread runtime",
        ));
    }
    let remote = match s.listen.strip_prefix(super::access::UNIX_PREFIX) {
        Some(path) => super::access::validate_socket(path, s)?,
        None => {
            let listen: SocketAddr = s.listen.parse().map_err(|_| {
                ConfigError::new(
                    "server.listen",
                    "must be an address such as 127.0.0.1:8080, or unix:/path/to/proxy.sock",
                )
            })?;
            !listen.ip().is_loopback()
        }
    };
    if remote {
        if !s.allow_remote {
            return Err(ConfigError::new(
                "server.listen",
                "is not a loopback address; set server.allow_remote = true and an inbound_key to expose the proxy",
            ));
        }
        if s.inbound_key.is_none() && s.inbound_key_file.is_none() && config.clients.is_empty() {
            return Err(ConfigError::new(
                "server.inbound_key",
                "is required when server.allow_remote = true (or define [clients.NAME] with keys)",
            ));
        }
    }
    if matches!(&s.inbound_key, Some(k) if k.is_empty()) {
        return Err(ConfigError::new("server.inbound_key", "must not be empty"));
    }
    if !s.admin_listen.is_empty() && s.admin_listen.parse::<SocketAddr>().is_err() {
        return Err(ConfigError::new(
            "server.admin_listen",
            "must be an address such as 127.0.0.1:9090, or empty",
        ));
    }
    if http::HeaderName::from_bytes(s.tenant_header.as_bytes()).is_err() {
        return Err(ConfigError::new(
            "server.tenant_header",
            "is not a valid header name",
        ));
    }
    for (key, value) in [
        ("request_timeout_secs", s.request_timeout_secs),
        ("body_timeout_secs", s.body_timeout_secs),
        ("max_request_body_bytes", s.max_request_body_bytes),
    ] {
        if value == 0 {
            return Err(ConfigError::new(
                format!("server.{key}"),
                "must be greater than 0",
            ));
        }
    }
    if let Some(hosts) = &s.allowed_hosts {
        if let Some(i) = hosts
            .iter()
            .position(|h| h.trim().is_empty() || h.contains('/'))
        {
            return Err(ConfigError::new(
                format!("server.allowed_hosts[{i}]"),
                "must be a host name or address",
            ));
        }
    }
    Ok(())
}

/// Keys set in a credential table, for the per-type check.
fn present_keys(c: &CredentialConfig) -> Vec<&'static str> {
    let flags = [
        ("tenant_id", c.tenant_id.is_some()),
        ("client_id", c.client_id.is_some()),
        ("client_secret", c.client_secret.is_some()),
        ("client_secret_file", c.client_secret_file.is_some()),
        ("token_version", c.token_version.is_some()),
        ("token_url", c.token_url.is_some()),
        ("tenants", !c.tenants.is_empty()),
        ("certificate", c.certificate.is_some()),
        ("private_key", c.private_key.is_some()),
        ("certificate_password", c.certificate_password.is_some()),
        (
            "certificate_password_file",
            c.certificate_password_file.is_some(),
        ),
        ("assertion_alg", c.assertion_alg.is_some()),
        ("send_certificate_chain", c.send_certificate_chain.is_some()),
        ("token_file", c.token_file.is_some()),
        ("object_id", c.object_id.is_some()),
        ("resource_id", c.resource_id.is_some()),
        ("endpoint", c.endpoint.is_some()),
        ("token_store", c.token_store.is_some()),
        ("username", c.username.is_some()),
        ("password", c.password.is_some()),
        ("password_file", c.password_file.is_some()),
    ];
    flags
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect()
}

fn allowed_keys(kind: CredentialType) -> &'static [&'static str] {
    match kind {
        CredentialType::ClientSecret => &[
            "tenant_id",
            "client_id",
            "client_secret",
            "client_secret_file",
            "token_version",
            "token_url",
            "tenants",
        ],
        CredentialType::ClientCertificate => &[
            "tenant_id",
            "client_id",
            "token_version",
            "token_url",
            "tenants",
            "certificate",
            "private_key",
            "certificate_password",
            "certificate_password_file",
            "assertion_alg",
            "send_certificate_chain",
        ],
        CredentialType::WorkloadIdentity => &[
            "tenant_id",
            "client_id",
            "token_version",
            "token_url",
            "tenants",
            "token_file",
        ],
        CredentialType::ManagedIdentity => &["client_id", "object_id", "resource_id", "endpoint"],
        CredentialType::DeviceCode => &[
            "tenant_id",
            "client_id",
            "token_version",
            "token_url",
            "token_store",
        ],
        CredentialType::Password => &[
            "tenant_id",
            "client_id",
            "client_secret",
            "client_secret_file",
            "token_version",
            "token_url",
            "username",
            "password",
            "password_file",
        ],
    }
}

fn validate_credential(name: &str, c: &CredentialConfig) -> Result<(), ConfigError> {
    let path = format!("credentials.{name}");
    let allowed = allowed_keys(c.kind);
    if let Some(key) = present_keys(c).into_iter().find(|k| !allowed.contains(k)) {
        return Err(ConfigError::new(
            format!("{path}.{key}"),
            format!("is not used by type {:?}", c.kind.as_str()),
        ));
    }
    match c.kind {
        CredentialType::ClientSecret
        | CredentialType::ClientCertificate
        | CredentialType::WorkloadIdentity
        | CredentialType::Password => {}
        CredentialType::DeviceCode => {}
        CredentialType::ManagedIdentity => return validate_managed_identity(&path, c),
    }
    let tenant = c.tenant_id.as_deref().ok_or_else(|| {
        ConfigError::new(
            format!("{path}.tenant_id"),
            "is required (or set AZURE_TENANT_ID)",
        )
    })?;
    check_tenant(tenant, &format!("{path}.tenant_id"))?;
    if c.client_id.as_deref().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            format!("{path}.client_id"),
            "is required (or set AZURE_CLIENT_ID)",
        ));
    }
    one_of(
        &path,
        "client_secret",
        c.client_secret.is_some(),
        c.client_secret_file.is_some(),
    )?;
    match c.kind {
        CredentialType::ClientSecret
            if c.client_secret.is_none() && c.client_secret_file.is_none() =>
        {
            return Err(ConfigError::new(
                format!("{path}.client_secret"),
                "is required (or client_secret_file, or AZURE_CLIENT_SECRET)",
            ));
        }
        CredentialType::ClientCertificate => {
            if c.certificate.is_none() {
                return Err(ConfigError::new(
                    format!("{path}.certificate"),
                    "is required (or set AZURE_CLIENT_CERTIFICATE_PATH)",
                ));
            }
            one_of(
                &path,
                "certificate_password",
                c.certificate_password.is_some(),
                c.certificate_password_file.is_some(),
            )?;
            if !matches!(
                c.assertion_alg.as_deref(),
                None | Some("PS256") | Some("RS256")
            ) {
                return Err(ConfigError::new(
                    format!("{path}.assertion_alg"),
                    "must be \"PS256\" or \"RS256\"",
                ));
            }
        }
        CredentialType::DeviceCode => {
            let store = c
                .token_store
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{path}.token_store"), "is required"))?;
            let dir = store
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() {
                return Err(ConfigError::new(
                    format!("{path}.token_store"),
                    format!("folder {} does not exist", dir.display()),
                ));
            }
        }
        CredentialType::WorkloadIdentity if c.token_file.is_none() => {
            return Err(ConfigError::new(
                format!("{path}.token_file"),
                "is required (or set AZURE_FEDERATED_TOKEN_FILE)",
            ));
        }
        CredentialType::Password => {
            if c.username.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::new(format!("{path}.username"), "is required"));
            }
            one_of(
                &path,
                "password",
                c.password.is_some(),
                c.password_file.is_some(),
            )?;
            if c.password.is_none() && c.password_file.is_none() {
                return Err(ConfigError::new(
                    format!("{path}.password"),
                    "is required (or password_file)",
                ));
            }
        }
        _ => {}
    }
    if !matches!(c.token_version, None | Some(1) | Some(2)) {
        return Err(ConfigError::new(
            format!("{path}.token_version"),
            "must be 1 or 2",
        ));
    }
    if let Some(url) = &c.token_url {
        check_url(
            &url.replace("{tenant}", "tenant"),
            &format!("{path}.token_url"),
            true,
        )?;
    }
    validate_tenants(&path, c)
}

/// Each alias names one tenant: the tenant header can carry it, no other alias, GUID or home
/// tenant reads the same ignoring case, so a header or pin resolves to what the config says.
fn validate_tenants(path: &str, c: &CredentialConfig) -> Result<(), ConfigError> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (alias, guid) in &c.tenants {
        let bad = |why: String| Err(ConfigError::new(format!("{path}.tenants.{alias}"), why));
        if guid == "*" {
            continue;
        }
        if !is_guid(guid) {
            return bad("must be a tenant GUID, or \"*\" to admit any GUID".into());
        }
        if !is_tenant_name(alias) {
            return bad("an alias is up to 256 letters, digits, '-', '_' and '.'".into());
        }
        if alias.eq_ignore_ascii_case(crate::routing::HOME) {
            return bad("\"home\" names the credential's own tenant; choose another alias".into());
        }
        if is_guid(alias) && !alias.eq_ignore_ascii_case(guid) {
            return bad("an alias that is a GUID must name that GUID".into());
        }
        if c.tenant_id
            .as_deref()
            .is_some_and(|home| home.eq_ignore_ascii_case(alias) && !is_guid(home))
        {
            return bad("is the credential's tenant_id; choose another alias".into());
        }
        if let Some(first) = seen.insert(alias.to_ascii_lowercase(), alias) {
            return bad(format!("reads as alias {first:?} (aliases ignore case)"));
        }
    }
    Ok(())
}

fn validate_managed_identity(path: &str, c: &CredentialConfig) -> Result<(), ConfigError> {
    let selectors = [&c.client_id, &c.object_id, &c.resource_id]
        .iter()
        .filter(|s| s.is_some())
        .count();
    if selectors > 1 {
        return Err(ConfigError::new(
            format!("{path}.client_id"),
            "set at most one of client_id, object_id, resource_id",
        ));
    }
    if let Some(url) = &c.endpoint {
        let ok = url.starts_with("https://")
            || is_loopback_url(url)
            || url.starts_with("http://169.254.169.254/");
        if !ok || url.parse::<http::Uri>().is_err() {
            return Err(ConfigError::new(
                format!("{path}.endpoint"),
                "must be https, IMDS or a loopback http URL",
            ));
        }
    }
    Ok(())
}

/// `KEY` and `KEY_file` are alternatives.
fn one_of(path: &str, key: &str, inline: bool, file: bool) -> Result<(), ConfigError> {
    if inline && file {
        return Err(ConfigError::new(
            format!("{path}.{key}_file"),
            format!("set {key} or {key}_file, not both"),
        ));
    }
    Ok(())
}

fn check_tenant(tenant: &str, path: &str) -> Result<(), ConfigError> {
    if matches!(
        tenant.to_ascii_lowercase().as_str(),
        "common" | "organizations" | "consumers"
    ) {
        return Err(ConfigError::new(
            path,
            "must be a specific tenant, not a multi-tenant alias",
        ));
    }
    let domain_like = tenant.contains('.')
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if is_guid(tenant) || (domain_like && is_tenant_name(tenant)) {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            "must be a tenant GUID or a verified domain name",
        ))
    }
}

fn validate_route(
    config: &Config,
    cloud: Cloud,
    r: &RouteConfig,
    path: &str,
) -> Result<(), ConfigError> {
    if r.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    if !r.prefix.starts_with('/') {
        return Err(ConfigError::new(
            format!("{path}.prefix"),
            "must start with /",
        ));
    }
    let service = Service::parse(&r.upstream);
    if let Some(region) = &r.region {
        if service.is_none() {
            return Err(ConfigError::new(
                format!("{path}.region"),
                "only applies to upstream = \"xdr\" | \"mde\" | \"graph\"",
            ));
        }
        if !cloud::REGIONS.contains(&region.as_str()) {
            return Err(ConfigError::new(
                format!("{path}.region"),
                format!("must be one of {}", cloud::REGIONS.join(", ")),
            ));
        }
    }
    match service {
        Some(s) => {
            if cloud.service(s, r.region.as_deref()).is_none() {
                return Err(ConfigError::new(
                    format!("{path}.upstream"),
                    format!(
                        "{:?} has no known host in cloud {:?}; give a URL",
                        r.upstream, config.cloud.name
                    ),
                ));
            }
        }
        None => {
            check_url(&r.upstream, &format!("{path}.upstream"), true)?;
            if r.scope.is_none() {
                return Err(ConfigError::new(
                    format!("{path}.scope"),
                    "is required when upstream is a URL",
                ));
            }
        }
    }
    if let Some(scope) = &r.scope {
        if scope.is_empty() || scope.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                format!("{path}.scope"),
                "must be one scope such as https://api.security.microsoft.com/.default",
            ));
        }
    }
    let cred = config.credentials.get(&r.credential).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.credential"),
            format!("no credential named {:?}", r.credential),
        )
    })?;
    if let Some(tenant) = &r.tenant {
        let known = cred.tenants.get(tenant).is_some_and(|g| g != "*")
            || (is_guid(tenant)
                && cred
                    .tenants
                    .values()
                    .any(|g| g == "*" || g.eq_ignore_ascii_case(tenant)))
            || cred.tenant_id.as_deref() == Some(tenant.as_str());
        if !known {
            return Err(ConfigError::new(
                format!("{path}.tenant"),
                format!(
                    "{tenant:?} is not an alias or allowed tenant of credential {:?}",
                    r.credential
                ),
            ));
        }
    }
    if let Some(limit) = &r.rate_limit {
        if !config.rate_limit.contains_key(limit) {
            return Err(ConfigError::new(
                format!("{path}.rate_limit"),
                format!("no rate_limit named {limit:?}"),
            ));
        }
    }
    Ok(())
}

/// True for a GUID in the 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// True for what the tenant header may carry: up to 256 ASCII letters, digits, `-`, `_`, `.`.
pub fn is_tenant_name(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// True when `url` is `http://` to a loopback host.
pub fn is_loopback_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http"))
        .and_then(|u| u.host().map(is_loopback_host))
        .unwrap_or(false)
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An absolute `https://` URL, or `http://` to loopback; no credentials, query or fragment.
/// `[rate_limit_store]`: a Redis URL without credentials in it, sane numbers.
fn validate_store(s: &super::RateLimitStoreConfig) -> Result<(), ConfigError> {
    let path = "rate_limit_store";
    if s.timeout_ms == 0 || s.timeout_ms > 60_000 {
        return Err(ConfigError::new(
            format!("{path}.timeout_ms"),
            "must be 1 to 60000",
        ));
    }
    if s.replicas_hint == 0 {
        return Err(ConfigError::new(
            format!("{path}.replicas_hint"),
            "must be at least 1",
        ));
    }
    if s.kind == super::StoreType::Local {
        return Ok(());
    }
    let url = s.url.as_deref().ok_or_else(|| {
        ConfigError::new(format!("{path}.url"), "is required when type = \"redis\"")
    })?;
    let bad = |why: &str| ConfigError::new(format!("{path}.url"), why.to_string());
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| bad("must start with redis:// or rediss:// (TLS)"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad(
            "must not contain credentials; set password (e.g. \"${REDIS_PASSWORD}\") or password_file",
        ));
    }
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    if s.password.is_some() && s.password_file.is_some() {
        return Err(ConfigError::new(
            format!("{path}.password"),
            "set password or password_file, not both",
        ));
    }
    Ok(())
}

fn check_url(url: &str, path: &str, allow_path: bool) -> Result<(), ConfigError> {
    // A URL with an `@` may carry a password: errors then leave it out.
    let shown = if url.contains('@') {
        "the URL".to_string()
    } else {
        format!("{url:?}")
    };
    let bad = |why: &str| ConfigError::new(path, format!("{shown} {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a valid URL"))?;
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(host) => {}
        Some("http") => return Err(bad("uses plain http to a non-loopback host; use https")),
        _ => return Err(bad("must start with https://")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("must not contain credentials"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    if !allow_path && !matches!(uri.path(), "" | "/") {
        return Err(bad("must not have a path"));
    }
    Ok(())
}
