//! Route and tenant resolution on generated configs: every validated route compiles as
//! written, the longest prefix on a segment boundary wins, a path the proxy accepts never
//! leaves its route's prefix upstream, and a tenant is only ever one the config allows.

use std::collections::BTreeSet;

use defender_proxy::config::{Config, CredentialConfig, RouteConfig, is_guid};
use defender_proxy::error::ProxyError;
use defender_proxy::forward::check_path;
use defender_proxy::routing::{Router, TenantPolicy};
use http::HeaderValue;
use proptest::prelude::*;

use crate::{GUID_A, GUID_B, GUID_C, env, router_of};

const HOME_DOMAIN: &str = "contoso.onmicrosoft.com";
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];
#[rustfmt::skip]
const SEGMENTS: &[&str] = &["api", "mde", "a", "ab", "A", "x.y", "v1.0", "", "ü", "incidents"];
#[rustfmt::skip]
const TRAVERSALS: &[&str] = &[
    "..", ".", "%2e%2e", "%2E.", ".%2e", "%2e", "%2f", "%2F", "%5c", "\\", "%252e%252e", "..;",
    "%", "%zz", "%c0%ae", ". .", "...",
];
const UPSTREAMS: &[&str] = &[
    "xdr",
    "mde",
    "graph",
    "https://example.test",
    "https://example.test/base/",
    "https://example.test/base/deeper",
    "http://127.0.0.1:9/up",
];
#[rustfmt::skip]
const ALIASES: &[&str] = &["contoso", "Contoso", "fabrikam", "a.b", "x_y", "home", "any", "common"];
/// Aliases the header cannot carry or that read as another tenant.
#[rustfmt::skip]
const ODD_ALIASES: &[&str] = &[
    "my tenant", "x/y", "ü", GUID_C, "22222222-2222-2222-2222-22222222222A", HOME_DOMAIN,
    "Contoso.onmicrosoft.com", "",
];
#[rustfmt::skip]
const TENANT_VALUES: &[&str] = &[
    GUID_A, GUID_B, GUID_C, "44444444-4444-4444-4444-444444444444",
    "AAAAAAAA-4444-4444-4444-444444444444", "*",
];

/// A generated partner config: one credential, its tenants, routes pinned or not.
#[derive(Debug, Clone)]
struct Spec {
    home: &'static str,
    tenants: Vec<(&'static str, &'static str)>,
    routes: Vec<(String, bool, &'static str, Option<&'static str>)>,
}

impl Spec {
    fn toml(&self) -> String {
        let tenants = toml::Table::from_iter(
            self.tenants
                .iter()
                .map(|(a, g)| (a.to_string(), toml::Value::from(*g))),
        );
        let mut credential = toml::Table::new();
        credential.insert("type".into(), "client_secret".into());
        credential.insert("client_id".into(), "c".into());
        credential.insert("client_secret".into(), "s".into());
        credential.insert("tenant_id".into(), self.home.into());
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
                r.insert("upstream".into(), (*upstream).into());
                r.insert("scope".into(), "https://example.test/.default".into());
                r.insert("credential".into(), "app".into());
                if let Some(t) = pin {
                    r.insert("tenant".into(), (*t).into());
                }
                toml::Value::Table(r)
            });
        let mut config = toml::Table::new();
        config.insert(
            "credentials".into(),
            toml::Table::from_iter([("app".to_string(), credential.into())]).into(),
        );
        config.insert("route".into(), toml::Value::Array(routes.collect()));
        toml::to_string(&config).unwrap()
    }
}

fn prefix() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(SEGMENTS), 0..4),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| format!("/{}{}", segs.join("/"), if slash { "/" } else { "" }))
}

fn spec() -> impl Strategy<Value = Spec> {
    let alias = prop_oneof![
        3 => prop::sample::select(ALIASES),
        1 => prop::sample::select(ODD_ALIASES),
    ];
    let tenant = (alias, prop::sample::select(TENANT_VALUES));
    let home = prop::sample::select(&[GUID_A, HOME_DOMAIN][..]);
    (home, prop::collection::vec(tenant, 0..4)).prop_flat_map(|(home, tenants)| {
        // Pins mostly name a tenant the spec lists, so that most specs validate.
        let mut listed: Vec<&'static str> = vec![home];
        for (alias, guid) in tenants.iter().filter(|(_, g)| *g != "*") {
            listed.extend([*alias, *guid]);
        }
        let pin = prop::option::weighted(
            0.3,
            prop_oneof![
                4 => prop::sample::select(listed),
                1 => prop::sample::select(&["common", "fabrikam", GUID_C, HOME_DOMAIN][..]),
            ],
        );
        let route = (
            prefix(),
            any::<bool>(),
            prop::sample::select(UPSTREAMS),
            pin,
        );
        let routes = prop::collection::vec(route, 1..6);
        routes.prop_map(move |routes| Spec {
            home,
            tenants: tenants.clone(),
            routes,
        })
    })
}

/// Paths built from route-like segments and traversal attempts, or anything at all.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        3 => prop::sample::select(SEGMENTS),
        2 => prop::sample::select(TRAVERSALS),
    ];
    prop_oneof![
        6 => prop::collection::vec(segment, 0..7).prop_map(|s| format!("/{}", s.join("/"))),
        1 => any::<String>(),
        1 => (1..3000usize).prop_map(|n| "/a".repeat(n)),
        1 => (1..20_000usize).prop_map(|n| format!("/api/{}", "x".repeat(n))),
    ]
}

/// Header values: names the config knows in any case, GUIDs, multi-tenant names, and the
/// same with CR, LF, NUL, spaces and non-ASCII added, or too long.
fn header() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        prop::sample::select(ALIASES).prop_map(str::to_string),
        prop::sample::select(TENANT_VALUES).prop_map(str::to_string),
        prop::sample::select(&MULTI_TENANT[..]).prop_map(str::to_string),
        Just(HOME_DOMAIN.to_string()),
        "[A-Za-z0-9._-]{250,260}",
    ];
    let cased = (name, any::<u64>()).prop_map(|(n, bits)| {
        n.char_indices()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect::<String>()
    });
    let noise = prop::sample::select(
        &[
            "\r\n", "\n", "\r", "\0", " ", "\t", "ü", "\u{a0}", "\u{3000}",
        ][..],
    );
    let cased = cased.boxed();
    prop_oneof![
        3 => cased.clone().prop_map(String::into_bytes),
        2 => (cased, noise, any::<prop::sample::Index>()).prop_map(|(n, x, i)| {
            let at = i.index(n.len() + 1);
            let at = if n.is_char_boundary(at) { at } else { 0 };
            format!("{}{x}{}", &n[..at], &n[at..]).into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
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

fn below(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What an upstream may make of a path: percent-decoded once, backslashes as slashes, dot
/// segments removed (RFC 3986 §5.2.4).
fn normalize(path: &str) -> String {
    remove_dot_segments(&decode(path))
}

fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
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
        let last = i + 1 == segments.len();
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        if last && matches!(*seg, "." | "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

fn tenant_error(bytes: &[u8]) -> Option<ProxyError> {
    let s = String::from_utf8_lossy(bytes);
    let name = s.trim_matches([' ', '\t']);
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then_some(ProxyError::BadTenant)
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn validated_routes_compile_as_written(spec in spec()) {
        if let Ok(config) = Config::from_toml(&spec.toml(), &env) {
            compiled_as_configured(&config, &router_of(&config));
        }
    }

    #[test]
    fn the_longest_prefix_on_a_segment_boundary_wins(spec in spec(), paths in prop::collection::vec(path(), 1..8)) {
        let Ok(config) = Config::from_toml(&spec.toml(), &env) else { return Ok(()) };
        let router = router_of(&config);
        for path in &paths {
            let matching: Vec<&str> = config
                .routes
                .iter()
                .map(|r| r.prefix.trim_end_matches('/'))
                .filter(|p| below(path, p))
                .collect();
            let longest = matching.iter().map(|p| p.len()).max();
            match router.route(path) {
                Ok((_, r)) => prop_assert_eq!(Some(r.prefix().len()), longest, "{:?}", path),
                Err(e) => prop_assert!(longest.is_none() && matches!(e, ProxyError::NoRoute)),
            }
        }
    }

    /// A path `check_path` lets through reaches the upstream under the route's prefix (and
    /// base path), even after the upstream decodes it and resolves dot segments.
    #[test]
    fn accepted_paths_stay_below_their_route(spec in spec(), paths in prop::collection::vec(path(), 1..8)) {
        let Ok(config) = Config::from_toml(&spec.toml(), &env) else { return Ok(()) };
        let router = router_of(&config);
        for path in &paths {
            let accepted = check_path(path).is_ok();
            if accepted {
                prop_assert_eq!(normalize(path), decode(path), "dot segments got through");
            }
            let Ok((_, route)) = router.route(path) else { continue };
            if !accepted {
                continue;
            }
            let upstream = route.upstream_path(path);
            let client = if route.strip_prefix { "" } else { route.prefix() };
            let root = format!("{}{client}", route.upstream.base_path);
            prop_assert!(below(&upstream, &root), "{:?} -> {:?} not below {:?}", path, upstream, root);
            prop_assert!(below(&normalize(&upstream), &root), "{:?} -> {:?} escapes {:?}", path, upstream, root);
        }
    }

    /// A tenant is the pinned one, the home one, an alias's GUID, a listed GUID, or any GUID
    /// when `"*"` is listed: always the one tenant the name means; never a multi-tenant name;
    /// malformed names (CR, LF, NUL, non-ASCII, too long) are refused.
    #[test]
    fn tenants_resolve_to_what_the_config_says(spec in spec(), headers in prop::collection::vec(header(), 1..8)) {
        let Ok(config) = Config::from_toml(&spec.toml(), &env) else { return Ok(()) };
        let router = router_of(&config);
        let credential = &config.credentials["app"];
        let policy = TenantPolicy::from_config(credential);
        let home = credential.tenant_id.as_deref().unwrap().to_ascii_lowercase();
        for (alias, guid) in credential.tenants.iter().filter(|(_, g)| *g != "*") {
            let t = policy.resolve(&alias.to_ascii_uppercase()).map(|t| t.id.to_string());
            prop_assert_eq!(t.ok(), Some(guid.to_ascii_lowercase()), "alias {:?}", alias);
        }
        for (route, configured) in router.routes().iter().zip(sorted_like(&config, &router)) {
            let pinned = route.pinned.clone();
            if let Some(pin) = &configured.tenant {
                let meant = meanings(credential, pin);
                prop_assert_eq!(meant.len(), 1, "pin {:?} means {:?}", pin, meant);
                prop_assert!(meant.contains(&*pinned.as_ref().unwrap().id), "pin {:?}", pin);
            }
            let no_header = router.tenant(route, None).map(|t| t.id.to_string()).ok();
            prop_assert_eq!(no_header, Some(pinned.as_ref().map_or(home.clone(), |p| p.id.to_string())));
            for bytes in &headers {
                if let Ok(v) = HeaderValue::from_bytes(bytes) {
                    let t = router.tenant(route, Some(&v));
                    if let Some(p) = &pinned {
                        prop_assert_eq!(t.as_ref().ok(), Some(p), "a pin wins over the header");
                    } else if v.to_str().is_err() {
                        prop_assert!(matches!(t, Err(ProxyError::BadTenant)), "non-ASCII {:?}", v);
                    }
                }
                let name = String::from_utf8_lossy(bytes).trim_matches([' ', '\t']).to_string();
                let meant = meanings(credential, &name);
                prop_assert!(meant.len() <= 1, "{:?} means {:?}", name, meant);
                match (policy.resolve(&String::from_utf8_lossy(bytes)), tenant_error(bytes)) {
                    (Ok(t), None) => {
                        prop_assert!(!MULTI_TENANT.contains(&&*t.id), "{:?}", t);
                        prop_assert_eq!(meant.first().map(String::as_str), Some(&*t.id));
                    }
                    (Err(ProxyError::TenantNotAllowed), None) => {
                        prop_assert!(meant.is_empty(), "{:?} refused", name);
                    }
                    (Err(ProxyError::BadTenant), Some(_)) => {}
                    (other, expected) => prop_assert!(false, "{:?}: {:?}, expected {:?}", name, other, expected),
                }
            }
        }
    }
}

/// The tenants `name` can mean to a credential: an alias's GUID, a listed GUID itself, the
/// home tenant, else any GUID when `"*"` is listed. Validation must leave no name with two.
fn meanings(credential: &CredentialConfig, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (alias, guid) in credential.tenants.iter().filter(|(_, g)| *g != "*") {
        if alias.eq_ignore_ascii_case(name) {
            out.insert(guid.to_ascii_lowercase());
        }
        if guid.eq_ignore_ascii_case(name) {
            out.insert(name.to_ascii_lowercase());
        }
    }
    if credential
        .tenant_id
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(name))
    {
        out.insert(name.to_ascii_lowercase());
    }
    let any_guid = credential.tenants.values().any(|g| g == "*");
    if out.is_empty() && any_guid && is_guid(name) {
        out.insert(name.to_ascii_lowercase());
    }
    out
}

/// The configured routes in the router's order.
fn sorted_like<'a>(config: &'a Config, router: &Router) -> Vec<&'a RouteConfig> {
    router
        .routes()
        .iter()
        .map(|r| config.routes.iter().find(|c| *c.name == *r.name).unwrap())
        .collect()
}
