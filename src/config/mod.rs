//! `proxy.toml`: the types (serde, unknown keys refused), loading with `${VAR}` expansion and
//! secret files, and `validate()` of the cross-field rules. Every error names its key path.

mod access;
pub use access::socket_mode;
mod expand;
mod validate;

pub use expand::{Env, ProcessEnv, expand_str};
pub use validate::{is_guid, is_loopback_url, is_tenant_name};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::secret::Secret;

/// A configuration error: the key path it concerns and what is wrong. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted key path, e.g. `route[2].credential`; empty for whole-file problems.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A new error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// Adds the name of the route a `route[N]...` error is about: people know their routes by
    /// name, not by position in the file.
    fn naming_route(mut self, name_of: impl Fn(usize) -> Option<String>) -> Self {
        let index = self
            .path
            .strip_prefix("route[")
            .and_then(|rest| rest.split(']').next())
            .and_then(|i| i.parse().ok());
        if let Some(name) = index.and_then(name_of).filter(|n| !n.is_empty()) {
            self.message.push_str(&format!(" (route {name:?})"));
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The whole `proxy.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and request handling.
    pub server: ServerConfig,
    /// Which Microsoft cloud.
    pub cloud: CloudConfig,
    /// Outbound TLS.
    pub tls: TlsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Named credentials that routes refer to.
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Routes, matched by longest prefix.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Named rate limits that routes refer to.
    pub rate_limit: BTreeMap<String, RateLimitConfig>,
    /// Named local clients, each with its own inbound key and grants.
    pub clients: BTreeMap<String, ClientConfig>,
    /// Where rate-limit reservations are kept: this process, or Redis shared by replicas.
    pub rate_limit_store: RateLimitStoreConfig,
}

/// `[clients.NAME]`: a local tool with its own inbound key, limited to some routes and
/// methods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The key it sends in `x-defender-proxy-key`.
    pub key: Option<Secret>,
    /// File holding the key.
    pub key_file: Option<PathBuf>,
    /// Names of the routes it may use; all when unset.
    pub routes: Option<Vec<String>>,
    /// Methods it may use; any the route allows when unset.
    pub methods: Option<Vec<String>>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Proxy listener address.
    pub listen: String,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`); empty disables it.
    pub admin_listen: String,
    /// Header that selects the tenant; never forwarded.
    pub tenant_header: String,
    /// Time allowed for the upstream to answer with its status and headers.
    pub request_timeout_secs: u64,
    /// Largest request body forwarded.
    pub max_request_body_bytes: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_secs: u64,
    /// A request body that sends no data for this long is cut off with 408.
    pub body_timeout_secs: u64,
    /// Host header values accepted (host part, port ignored). Default: loopback names.
    pub allowed_hosts: Option<Vec<String>>,
    /// Opt-in for a non-loopback `listen`; requires `inbound_key`.
    pub allow_remote: bool,
    /// Shared key clients must send in `x-defender-proxy-key`.
    pub inbound_key: Option<Secret>,
    /// File holding the inbound key.
    pub inbound_key_file: Option<PathBuf>,
    /// Threads of the runtime that serves the proxy (`run`); 0 means one per CPU core.
    pub workers: usize,
    /// How the proxy listener is served: by the one multi-threaded runtime, or by a
    /// current-thread runtime per worker.
    pub runtime: ServerRuntime,
    /// Permissions of a `unix:` listen socket, in octal.
    pub socket_mode: String,
    /// Group (name or number) that owns a `unix:` listen socket.
    pub socket_group: Option<String>,
    /// The wait budget of a request on a route without a `rate_limit`: the longest it waits
    /// out upstream throttling (429/503 with a retry time) before the client sees the 429.
    pub max_wait_secs: u64,
    /// Fetch each route's token for its home (or pinned) tenant at start and after each
    /// reload; `/readyz` is 503 until they were had.
    pub warm_up: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            tenant_header: "x-tenant-id".into(),
            request_timeout_secs: 300,
            max_request_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_secs: 30,
            body_timeout_secs: 30,
            allowed_hosts: None,
            allow_remote: false,
            inbound_key: None,
            inbound_key_file: None,
            workers: 0,
            runtime: ServerRuntime::MultiThread,
            socket_mode: "0600".into(),
            socket_group: None,
            max_wait_secs: DEFAULT_SERVER_MAX_WAIT_SECS,
            warm_up: true,
        }
    }
}

/// `[cloud]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// `public`, `gcc`, `gcc-high`, `dod` or `china`.
    pub name: String,
    /// Authority override (also read from `AZURE_AUTHORITY_HOST`).
    pub authority_host: Option<String>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            name: "public".into(),
            authority_host: None,
        }
    }
}

/// `[tls]`: outbound TLS settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Extra PEM roots (e.g. a TLS-inspecting corporate proxy's CA).
    pub extra_ca_file: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`; `--log-format` overrides.
    pub format: String,
    /// A tracing filter such as `info` or `defender_proxy=debug`; `RUST_LOG` overrides.
    pub level: String,
    /// One line per proxied request.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
            access_log: true,
        }
    }
}

/// The kinds of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// Client credentials with a shared secret.
    ClientSecret,
    /// Client credentials with a certificate-signed assertion.
    ClientCertificate,
    /// Client credentials with a federated (Kubernetes) token as assertion.
    WorkloadIdentity,
    /// Azure managed identity (IMDS or App Service).
    ManagedIdentity,
    /// User sign-in by device code, then refresh tokens.
    DeviceCode,
    /// Legacy resource-owner password credentials.
    Password,
}

impl CredentialType {
    /// The name used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::ClientSecret => "client_secret",
            CredentialType::ClientCertificate => "client_certificate",
            CredentialType::WorkloadIdentity => "workload_identity",
            CredentialType::ManagedIdentity => "managed_identity",
            CredentialType::DeviceCode => "device_code",
            CredentialType::Password => "password",
        }
    }
}

/// `[credentials.NAME]`: one flat table; `validate()` checks which keys each type takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Which kind.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// Home tenant (GUID or verified domain).
    pub tenant_id: Option<String>,
    /// Application (client) ID.
    pub client_id: Option<String>,
    /// Client secret.
    pub client_secret: Option<Secret>,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// 2 (default): `/oauth2/v2.0/token` with `scope`; 1: `/oauth2/token` with `resource`.
    pub token_version: Option<u8>,
    /// Token endpoint override; `{tenant}` is replaced by the tenant.
    pub token_url: Option<String>,
    /// Partner context: alias → tenant GUID; a value of `"*"` admits any GUID.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// Certificate (PEM with key, or PFX).
    pub certificate: Option<PathBuf>,
    /// Separate PEM private key.
    pub private_key: Option<PathBuf>,
    /// PFX password.
    pub certificate_password: Option<Secret>,
    /// File holding the PFX password.
    pub certificate_password_file: Option<PathBuf>,
    /// `PS256` (default) or `RS256`.
    pub assertion_alg: Option<String>,
    /// Add `x5c` to the assertion header.
    pub send_certificate_chain: Option<bool>,
    /// Federated token file (workload identity).
    pub token_file: Option<PathBuf>,
    /// User-assigned managed identity by object ID.
    pub object_id: Option<String>,
    /// User-assigned managed identity by resource ID.
    pub resource_id: Option<String>,
    /// Managed identity endpoint override.
    pub endpoint: Option<String>,
    /// Where the device-code refresh token is kept.
    pub token_store: Option<PathBuf>,
    /// ROPC user name.
    pub username: Option<String>,
    /// ROPC password.
    pub password: Option<Secret>,
    /// File holding the ROPC password.
    pub password_file: Option<PathBuf>,
}

/// `[[route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Path prefix; longest wins.
    pub prefix: String,
    /// An `https://` URL (or loopback `http://`), or a service name: `xdr`, `mde`, `graph`.
    pub upstream: String,
    /// OAuth scope; defaults from the service name.
    pub scope: Option<String>,
    /// Credential name.
    pub credential: String,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Pin the tenant (alias or GUID).
    pub tenant: Option<String>,
    /// Rate limit name.
    pub rate_limit: Option<String>,
    /// Regional host for service names: `us`, `eu`, `uk`, `au`, `swa`.
    pub region: Option<String>,
    /// Rewrite `@odata.nextLink`/`@odata.deltaLink` and `Location` to come back through the proxy.
    #[serde(default = "yes")]
    pub rewrite_links: bool,
    /// Absorb upstream 429/503 (wait and retry) when the wait fits the request's budget: the
    /// limit's `max_wait_secs`, or `server.max_wait_secs` on a route without a limit.
    #[serde(default = "yes")]
    pub retry_throttled: bool,
    /// The methods the route forwards; any when unset.
    pub methods: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// `[rate_limit.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per rolling minute.
    pub per_minute: Option<u32>,
    /// Requests per rolling hour.
    pub per_hour: Option<u32>,
    /// A request's wait budget in total (queue, absorbed upstream throttling, retries);
    /// default: `default_max_wait_secs()`.
    pub max_wait_secs: Option<u64>,
}

/// `server.max_wait_secs` when not set: a minute, Defender's shortest quota window.
pub const DEFAULT_SERVER_MAX_WAIT_SECS: u64 = 60;

impl RateLimitConfig {
    /// The wait budget of a request: `max_wait_secs`, else the shortest window plus 5 s. An
    /// admission counts for its window plus one to two slots (up to 1 s of a minute),
    /// so a budget of exactly the window could not reach the first slot that frees.
    pub fn max_wait_secs(&self) -> u64 {
        let window = match (self.per_minute, self.per_hour) {
            (None, Some(_)) => 3600,
            _ => 60,
        };
        self.max_wait_secs.unwrap_or(window + 5)
    }
}

/// `server.runtime`: what serves the proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerRuntime {
    /// One multi-threaded tokio runtime with `workers` threads serves every connection, and
    /// a request may move between its threads.
    #[default]
    MultiThread,
    /// `workers` threads, each a current-thread runtime that accepts its own connections and
    /// keeps its own upstream pool, so a request runs start to finish on one thread.
    PerCore,
}

/// The kinds of rate-limit store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreType {
    /// Each process keeps its own windows (one replica).
    #[default]
    Local,
    /// Replicas share their windows through Redis.
    Redis,
}

/// `[rate_limit_store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitStoreConfig {
    /// `local` or `redis`.
    #[serde(rename = "type")]
    pub kind: StoreType,
    /// `redis://host:port[/db]` or `rediss://` (TLS); never with a password in it.
    pub url: Option<String>,
    /// The Redis user (ACL), when not `default`.
    pub username: Option<String>,
    /// The Redis password (usually `${REDIS_PASSWORD}`).
    pub password: Option<Secret>,
    /// A file holding the Redis password.
    pub password_file: Option<PathBuf>,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Longest a Redis call may take before this replica falls back to local limits.
    pub timeout_ms: u64,
    /// Replicas sharing the limits: while Redis is unreachable each keeps limit / this.
    pub replicas_hint: u32,
}

impl Default for RateLimitStoreConfig {
    fn default() -> Self {
        RateLimitStoreConfig {
            kind: StoreType::Local,
            url: None,
            username: None,
            password: None,
            password_file: None,
            key_prefix: "defender-proxy:".into(),
            timeout_ms: 250,
            replicas_hint: 1,
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl Config {
    /// Reads, expands, parses and validates `path`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, env)?
            .with_base_dir(base)
            .validated(env)
    }

    /// Parses and expands TOML text without validating.
    pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let routes = table.get("route").and_then(toml::Value::as_array).cloned();
        let name_of = |i: usize| {
            let name = routes.as_ref()?.get(i)?.get("name")?.as_str()?;
            Some(name.to_string())
        };
        expand::expand_table(&mut table, "", env).map_err(|e| e.naming_route(name_of))?;
        let de = toml::Value::Table(table);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = key_path(e.path());
            ConfigError::new(path, without_value(e.into_inner().to_string())).naming_route(name_of)
        })
    }

    /// Parses, expands and validates TOML text (relative paths resolve against the working dir).
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Config::parse(text, env)?.validated(env)
    }

    /// Validates, filling values taken from the environment (authority host and the like).
    pub fn validated(mut self, env: &dyn Env) -> Result<Config, ConfigError> {
        validate::apply_env_fallbacks(&mut self, env);
        validate::validate(&self)
            .map_err(|e| e.naming_route(|i| Some(self.routes.get(i)?.name.clone())))?;
        Ok(self)
    }

    /// Files whose change should reload the config: secrets, certificates, CA roots. (A
    /// federated token file is not one: it rotates by design and is re-read at each fetch.)
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [
            &self.server.inbound_key_file,
            &self.tls.extra_ca_file,
            &self.rate_limit_store.password_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        for c in self.credentials.values() {
            for p in [
                &c.client_secret_file,
                &c.certificate,
                &c.private_key,
                &c.certificate_password_file,
                &c.password_file,
            ] {
                files.extend(p.iter().cloned());
            }
        }
        files.extend(self.clients.values().filter_map(|c| c.key_file.clone()));
        files
    }

    /// Makes relative file paths relative to the config file's folder.
    fn with_base_dir(mut self, base: &Path) -> Config {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = base.join(&*path);
            }
        };
        fix(&mut self.server.inbound_key_file);
        fix(&mut self.tls.extra_ca_file);
        fix(&mut self.rate_limit_store.password_file);
        for c in self.credentials.values_mut() {
            for p in [
                &mut c.client_secret_file,
                &mut c.certificate,
                &mut c.private_key,
                &mut c.certificate_password_file,
                &mut c.token_file,
                &mut c.token_store,
                &mut c.password_file,
            ] {
                fix(p);
            }
        }
        for c in self.clients.values_mut() {
            fix(&mut c.key_file);
        }
        self
    }
}

/// A TOML syntax error with its line and column. Only the parser's message is kept, never
/// the quoted source line, which may hold a secret.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim_end_matches('.');
    let Some(mut start) = e.span().map(|s| s.start.min(text.len())) else {
        return ConfigError::new("", format!("invalid TOML: {message}"));
    };
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let key = match e.span() {
        Some(span) if message == "duplicate key" => duplicate_key(text, before, span),
        _ => String::new(),
    };
    ConfigError::new(
        "",
        format!("invalid TOML at line {line}, column {column}: {message}{key}"),
    )
}

/// Names a duplicate key, and the table it is in (the last header above it): the parser's
/// span covers the key, never a value, so no secret is shown.
fn duplicate_key(text: &str, before: &str, span: std::ops::Range<usize>) -> String {
    let key = text.get(span).unwrap_or_default().trim();
    if key.is_empty() || key.len() > 200 || key.contains(['\n', '=']) {
        return String::new();
    }
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    if before[line_start..].trim_start().starts_with('[') {
        return format!(" `{key}` (a table defined twice)");
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.split('#').next().unwrap_or(l).trim());
    match table {
        Some(table) => format!(" `{key}` in {table}"),
        None => format!(" `{key}`"),
    }
}

/// A serde path as `route[0].strip`, keys quoted when they are not bare (`""`, `"a.b"`).
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&expand::path_segment(key));
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    out
}

/// Serde's `invalid type: string "...", expected ...` quotes the value, which may be a secret
/// in the wrong table (`[credentials]` for `[credentials.app]`): keep the kind, drop the value.
fn without_value(message: String) -> String {
    for lead in ["invalid type: string", "invalid value: string"] {
        let rest = message
            .strip_prefix(lead)
            .map(|r| r.find(", expected ").map(|i| &r[i..]));
        if let Some(Some(rest)) = rest {
            return format!("{lead}{rest}");
        }
    }
    message
}

/// Reads a secret given inline or as a file (trailing newline removed).
pub fn read_secret(
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    path: &str,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                ConfigError::new(
                    format!("{path}_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
