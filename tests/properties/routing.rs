//! Route and tenant resolution on generated configs: every validated route compiles as
//! written, the longest prefix on a segment boundary wins, a path the proxy accepts never
//! leaves its route's prefix upstream, and a tenant is only ever one the config allows.

use defender_proxy::config::Config;
use proptest::prelude::*;

use crate::oracle::{
    GUID_A, GUID_B, GUID_C, MULTI_TENANT, Spec, check_aliases, check_route, check_tenant_header,
    compiled_as_configured, env, router_of,
};

const HOME_DOMAIN: &str = "contoso.onmicrosoft.com";
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
            home: home.to_string(),
            tenants: tenants
                .iter()
                .map(|(a, g)| (a.to_string(), g.to_string()))
                .collect(),
            routes: routes
                .into_iter()
                .map(|(p, s, u, t)| (p, s, u.to_string(), t.map(str::to_string)))
                .collect(),
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

/// The config of a spec, when it validates (about half do).
fn load(spec: &Spec) -> Option<Config> {
    Config::from_toml(&spec.toml(), &env).ok()
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn validated_routes_compile_as_written(spec in spec()) {
        if let Some(config) = load(&spec) {
            compiled_as_configured(&config, &router_of(&config));
        }
    }

    /// The longest prefix on a segment boundary wins; a path `check_path` accepts stays
    /// below its route's prefix upstream, even once decoded and dot segments resolved.
    #[test]
    fn paths_go_to_the_longest_prefix_and_stay_below_it(
        spec in spec(),
        paths in prop::collection::vec(path(), 1..8),
    ) {
        let Some(config) = load(&spec) else { return Ok(()) };
        let router = router_of(&config);
        for path in &paths {
            check_route(&config, &router, path);
        }
    }

    /// A tenant is the pinned one, the home one, an alias's GUID, a listed GUID, or any GUID
    /// when `"*"` is listed: always the one tenant the name means; never a multi-tenant name;
    /// malformed names (CR, LF, NUL, non-ASCII, too long) are refused.
    #[test]
    fn tenants_resolve_to_what_the_config_says(
        spec in spec(),
        headers in prop::collection::vec(header(), 1..8),
    ) {
        let Some(config) = load(&spec) else { return Ok(()) };
        let router = router_of(&config);
        check_aliases(&config);
        for bytes in &headers {
            check_tenant_header(&config, &router, bytes);
        }
    }
}

#[test]
fn the_shipped_config_routes_and_resolves_safely() {
    let config = crate::oracle::check_config(include_str!("../../proxy.toml")).unwrap();
    let router = router_of(&config);
    for path in [
        "/api/incidents",
        "/mde/../api",
        "/mde/api/advancedqueries/run",
        "/graph",
        "",
    ] {
        check_route(&config, &router, path);
    }
    for header in [
        &b"contoso"[..],
        GUID_A.as_bytes(),
        b"common",
        b"a\r\nb",
        "\u{fc}".as_bytes(),
    ] {
        check_tenant_header(&config, &router, header);
    }
}
