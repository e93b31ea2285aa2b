//! What must hold for any config text, request path and tenant header: the checks that both
//! the property tests and the fuzz targets (`fuzz/`, which includes this file) run. Plain
//! `assert!`s and no test framework, so that both drivers report a failure the same way.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};

use defender_proxy::config::{
    Config, ConfigError, CredentialConfig, CredentialType, is_guid, is_tenant_name,
};
use defender_proxy::error::ProxyError;
use defender_proxy::layers::guard::check_path;
use defender_proxy::routing::{Route, Router, TenantPolicy};
use http::HeaderValue;

/// The home tenant of the test configs.
pub const GUID_A: &str = "11111111-1111-1111-1111-111111111111";
/// A customer tenant with an alias.
pub const GUID_B: &str = "22222222-2222-2222-2222-222222222222";
/// A tenant no config lists.
pub const GUID_C: &str = "33333333-3333-3333-3333-333333333333";
/// The client secret the environment holds; no error may show it.
pub const ENV_SECRET: &str = "EnvSecret~Zq81.x";
/// Names Entra reads as "any tenant": never a tenant the proxy may pick.
pub const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

/// The environment: the azure-identity variables and one empty variable.
pub fn env(name: &str) -> Option<String> {
    match name {
        "AZURE_TENANT_ID" => Some(GUID_A.into()),
        "AZURE_CLIENT_ID" => Some("client-id".into()),
        "AZURE_CLIENT_SECRET" => Some(ENV_SECRET.into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// The router the proxy would build: credentials indexed in name order, as `Runtime` does.
pub fn router_of(config: &Config) -> Router {
    let index: HashMap<String, usize> = config
        .credentials
        .keys()
        .enumerate()
        .map(|(i, name)| (name.clone(), i))
        .collect();
    Router::build(config, &index)
}

/// A partner config: one credential `app` with its tenants, and routes.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `tenant_id`.
    pub home: String,
    /// Alias → GUID or `*`.
    pub tenants: Vec<(String, String)>,
    /// Prefix, strip_prefix, upstream, pinned tenant.
    pub routes: Vec<(String, bool, String, Option<String>)>,
}

impl Spec {
    /// The config text.
    pub fn toml(&self) -> String {
        let tenants = toml::Table::from_iter(
            self.tenants
                .iter()
                .map(|(a, g)| (a.clone(), toml::Value::from(g.as_str()))),
        );
        let mut credential = toml::Table::new();
        credential.insert("type".into(), "client_secret".into());
        credential.insert("client_id".into(), "c".into());
        credential.insert("client_secret".into(), "s".into());
        credential.insert("tenant_id".into(), self.home.as_str().into());
        credential.insert("tenants".into(), tenants.into());
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, (prefix, strip, upstream, pin))| {
                let mut r = toml::Table::new();
                r.insert("name".into(), format!("r{i}").into());
                r.insert("prefix".into(), prefix.as_str().into());
                r.insert("strip_prefix".into(), (*strip).into());
                r.insert("upstream".into(), upstream.as_str().into());
                r.insert("scope".into(), "https://example.test/.default".into());
                r.insert("credential".into(), "app".into());
                if let Some(t) = pin {
                    r.insert("tenant".into(), t.as_str().into());
                }
                toml::Value::Table(r)
            });
        let mut config = toml::Table::new();
        let credentials = toml::Table::from_iter([("app".to_string(), credential.into())]);
        config.insert("credentials".into(), credentials.into());
        config.insert("route".into(), toml::Value::Array(routes.collect()));
        toml::to_string(&config).expect("a table serializes")
    }
}

/// Loads `text` and checks the outcome: a valid config is stable and routes as written, an
/// error says where the problem is.
pub fn check_config(text: &str) -> Result<Config, ConfigError> {
    let outcome = Config::from_toml(text, &env);
    match &outcome {
        Ok(config) => revalidates_identically(text, config),
        Err(e) => names_a_key_path_or_line(text, e),
    }
    outcome
}

fn revalidates_identically(text: &str, config: &Config) {
    let shown = format!("{config:?}");
    let again = Config::from_toml(text, &env).expect("loads twice");
    assert_eq!(format!("{again:?}"), shown, "loading is deterministic");
    let revalidated = config
        .clone()
        .validated(&env)
        .expect("a valid config revalidates");
    assert_eq!(
        format!("{revalidated:?}"),
        shown,
        "validation is idempotent"
    );
    let staged = Config::parse(text, &env).and_then(|c| c.validated(&env));
    assert_eq!(
        format!("{:?}", staged.unwrap()),
        shown,
        "parse + validated = from_toml"
    );
    compiled_as_configured(config, &router_of(config));
}

/// An error's path starts with a table the config knows or a top-level key of the text;
/// without a path, the message gives the line.
fn names_a_key_path_or_line(text: &str, e: &ConfigError) {
    assert!(!e.message.is_empty(), "an error says what is wrong: {e:?}");
    if e.path.is_empty() {
        assert!(e.message.contains("line "), "no key path and no line: {e}");
        return;
    }
    const TABLES: [&str; 7] = [
        "server",
        "cloud",
        "tls",
        "log",
        "credentials",
        "route",
        "rate_limit",
    ];
    let first = e.path.split(['.', '[']).next().unwrap_or_default();
    let in_text = toml::from_str::<toml::Table>(text).is_ok_and(|t| {
        t.keys()
            .any(|k| e.path.starts_with(k) || e.path.starts_with(&format!("{k:?}")))
    });
    assert!(
        TABLES.contains(&first) || in_text,
        "path {:?} names no key",
        e.path
    );
}

/// Every route of a validated config compiles with its prefix and its pinned tenant, and no
/// two routes are left competing for the same prefix.
pub fn compiled_as_configured(config: &Config, router: &Router) {
    assert_eq!(
        router.routes().len(),
        config.routes.len(),
        "a validated route was dropped"
    );
    for r in &config.routes {
        let compiled = router.routes().iter().find(|c| *c.name == r.name).unwrap();
        assert_eq!(compiled.prefix(), r.prefix.trim_end_matches('/'));
        assert_eq!(
            compiled.pinned.is_some(),
            r.tenant.is_some(),
            "route {:?} lost its pin",
            r.name
        );
    }
    let mut prefixes: Vec<&str> = router.routes().iter().map(|r| r.prefix()).collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    assert_eq!(
        prefixes.len(),
        router.routes().len(),
        "two routes share a prefix"
    );
}

/// `path` goes to the route with the longest prefix it is on or below; when `check_path`
/// accepts it, it reaches the upstream under that route's prefix (and base path), even after
/// the upstream decodes it and resolves dot segments.
pub fn check_route(config: &Config, router: &Router, path: &str) {
    let longest = config
        .routes
        .iter()
        .map(|r| r.prefix.trim_end_matches('/'))
        .filter(|p| below(path, p))
        .map(str::len)
        .max();
    let route = match router.route(path) {
        Ok((_, r)) => r,
        Err(e) => {
            assert!(
                longest.is_none() && matches!(e, ProxyError::NoRoute),
                "{path:?}: {e:?}"
            );
            return;
        }
    };
    assert_eq!(
        Some(route.prefix().len()),
        longest,
        "{path:?} went to {:?}",
        route.name
    );
    if check_path(path).is_err() {
        return;
    }
    assert_eq!(
        normalize(path),
        decode(path),
        "dot segments got through in {path:?}"
    );
    let upstream = route.upstream_path(path);
    let client = if route.strip_prefix {
        ""
    } else {
        route.prefix()
    };
    let root = format!("{}{client}", route.upstream.base_path);
    assert!(
        below(&upstream, &root),
        "{path:?} -> {upstream:?} not below {root:?}"
    );
    let seen = normalize(&upstream);
    assert!(
        below(&seen, &root),
        "{path:?} -> {upstream:?} reads as {seen:?}, outside {root:?}"
    );
}

/// True when `path` is `root` or below it on a segment boundary.
pub fn below(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What an upstream may make of a path: percent-decoded once, backslashes as slashes, dot
/// segments removed (RFC 3986 §5.2.4).
pub fn normalize(path: &str) -> String {
    remove_dot_segments(&decode(path))
}

fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).replace('\\', "/")
}

fn remove_dot_segments(decoded: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        if i + 1 == segments.len() && matches!(*seg, "." | "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Every alias resolves, in any case, to its GUID.
pub fn check_aliases(config: &Config) {
    for credential in config.credentials.values() {
        let policy = TenantPolicy::from_config(credential);
        for (alias, guid) in credential.tenants.iter().filter(|(_, g)| *g != "*") {
            let t = policy
                .resolve(&alias.to_ascii_uppercase())
                .map(|t| t.id.to_string());
            assert_eq!(t.ok(), Some(guid.to_ascii_lowercase()), "alias {alias:?}");
        }
    }
}

/// A tenant header on every route: a pin wins; otherwise the tenant is the one the name
/// means to the route's credential (alias, listed GUID, home, or any GUID under `"*"`),
/// never a multi-tenant name; malformed names (CR, LF, NUL, non-ASCII, too long) are
/// `BadTenant`, names the credential does not list `TenantNotAllowed`.
pub fn check_tenant_header(config: &Config, router: &Router, bytes: &[u8]) {
    let credentials: Vec<&CredentialConfig> = config.credentials.values().collect();
    for route in router.routes() {
        let credential = credentials[route.credential];
        let policy = TenantPolicy::from_config(credential);
        check_pin(config, route, credential, router, &policy);
        if let Ok(v) = HeaderValue::from_bytes(bytes) {
            let t = router.tenant(route, Some(v.as_bytes()));
            match &route.pinned {
                Some(p) => assert_eq!(t.as_deref().ok(), Some(p), "a pin wins over the header"),
                None if v.to_str().is_err() => {
                    assert!(matches!(t, Err(ProxyError::BadTenant)), "non-ASCII {v:?}")
                }
                None => {}
            }
        }
        let raw = String::from_utf8_lossy(bytes);
        let name = raw.trim_matches([' ', '\t']);
        let meant = meanings(credential, name);
        assert!(meant.len() <= 1, "{name:?} means {meant:?}");
        match (policy.resolve(&raw), is_tenant_name(name)) {
            (Ok(t), true) => {
                assert!(!MULTI_TENANT.contains(&&*t.id), "{t:?}");
                assert_eq!(meant.first().map(String::as_str), Some(&*t.id), "{name:?}");
            }
            (Err(ProxyError::TenantNotAllowed), true) => {
                assert!(meant.is_empty(), "{name:?} refused, means {meant:?}")
            }
            (Err(ProxyError::BadTenant), false) => {}
            (other, well_formed) => panic!("{name:?}: {other:?}, well formed: {well_formed}"),
        }
    }
}

/// A pinned route's tenant is the one its `tenant` means; without a header, the pin or home.
fn check_pin(
    config: &Config,
    route: &Route,
    credential: &CredentialConfig,
    router: &Router,
    policy: &TenantPolicy,
) {
    let configured = config
        .routes
        .iter()
        .find(|r| *r.name == *route.name)
        .unwrap();
    if let Some(pin) = &configured.tenant {
        let meant = meanings(credential, pin);
        assert_eq!(meant.len(), 1, "pin {pin:?} means {meant:?}");
        assert!(
            meant.contains(&*route.pinned.as_ref().unwrap().id),
            "pin {pin:?}"
        );
    }
    let expected = route.pinned.as_ref().or(policy.home());
    assert_eq!(router.tenant(route, None).as_deref().ok(), expected);
}

/// The tenants `name` can mean to a credential: an alias's GUID, a listed GUID itself, the
/// home tenant (by its ID, or as `home`), else any GUID when `"*"` is listed. Validation must
/// leave no name with two.
fn meanings(credential: &CredentialConfig, name: &str) -> BTreeSet<String> {
    let lower = name.to_ascii_lowercase();
    let mut out = BTreeSet::new();
    if lower == "home" {
        let identity = (credential.kind == CredentialType::ManagedIdentity)
            .then(|| "managed-identity".to_string());
        let home = credential.tenant_id.as_deref().map(str::to_ascii_lowercase);
        out.extend(home.or(identity));
    }
    for (alias, guid) in credential.tenants.iter().filter(|(_, g)| *g != "*") {
        if alias.eq_ignore_ascii_case(name) {
            out.insert(guid.to_ascii_lowercase());
        }
        if guid.eq_ignore_ascii_case(name) {
            out.insert(lower.clone());
        }
    }
    if credential
        .tenant_id
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(name))
    {
        out.insert(lower.clone());
    }
    let any_guid = credential.tenants.values().any(|g| g == "*");
    if out.is_empty() && any_guid && is_guid(name) {
        out.insert(lower);
    }
    out
}
