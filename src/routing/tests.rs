//! Tests of route and tenant resolution.

use super::*;
use crate::config::Config;

const GUID_A: &str = "11111111-1111-1111-1111-111111111111";
const GUID_B: &str = "22222222-2222-2222-2222-222222222222";
const GUID_C: &str = "33333333-3333-3333-3333-333333333333";

fn router(extra_tenants: &str) -> Router {
    let text = format!(
        r#"
[credentials.app]
type = "client_secret"
tenant_id = "{GUID_A}"
client_id = "c"
client_secret = "s"
[credentials.app.tenants]
contoso = "{GUID_B}"
{extra_tenants}

[[route]]
name = "xdr"
prefix = "/"
upstream = "xdr"
credential = "app"

[[route]]
name = "mde"
prefix = "/mde/"
upstream = "mde"
credential = "app"
strip_prefix = true

[[route]]
name = "pinned"
prefix = "/contoso"
upstream = "https://example.test/base/"
scope = "https://example.test/.default"
credential = "app"
tenant = "contoso"
"#
    );
    let config = Config::from_toml(&text, &|_: &str| None).unwrap();
    Router::build(&config, &HashMap::from([("app".to_string(), 0)]))
}

fn hv(s: &str) -> &[u8] {
    s.as_bytes()
}

#[test]
fn longest_prefix_wins_on_segment_boundaries() {
    let r = router("");
    assert_eq!(&*r.route("/api/incidents").unwrap().1.name, "xdr");
    assert_eq!(&*r.route("/mde/api/machines").unwrap().1.name, "mde");
    assert_eq!(&*r.route("/mde").unwrap().1.name, "mde");
    assert_eq!(&*r.route("/mdefoo").unwrap().1.name, "xdr");
}

#[test]
fn no_route_without_a_catch_all() {
    let text = r#"
[credentials.app]
type = "client_secret"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "c"
client_secret = "s"
[[route]]
name = "mde"
prefix = "/mde/"
upstream = "mde"
credential = "app"
"#;
    let config = Config::from_toml(text, &|_: &str| None).unwrap();
    let r = Router::build(&config, &HashMap::from([("app".to_string(), 0)]));
    assert!(matches!(r.route("/api/x"), Err(ProxyError::NoRoute)));
}

#[test]
fn strip_prefix_and_base_path_shape_the_upstream_path() {
    let r = router("");
    assert_eq!(
        r.route("/mde/api/machines")
            .unwrap()
            .1
            .upstream_path("/mde/api/machines"),
        "/api/machines"
    );
    assert_eq!(r.route("/mde").unwrap().1.upstream_path("/mde"), "/");
    let pinned = r.route("/contoso/x").unwrap().1;
    assert_eq!(pinned.upstream_path("/contoso/x"), "/base/contoso/x");
    assert_eq!(
        r.route("/api").unwrap().1.upstream.origin,
        "https://api.security.microsoft.com"
    );
}

#[test]
fn tenant_comes_from_pin_then_header_then_home() {
    let r = router("");
    let xdr = r.route("/api").unwrap().1;
    assert_eq!(&*r.tenant(xdr, None).unwrap().id, GUID_A);
    assert_eq!(&*r.tenant(xdr, None).unwrap().label, "home");
    let t = r.tenant(xdr, Some(hv("Contoso"))).unwrap();
    assert_eq!((&*t.id, &*t.label), (GUID_B, "contoso"));
    let t = r.tenant(xdr, Some(hv(&GUID_B.to_uppercase()))).unwrap();
    assert_eq!(&*t.id, GUID_B);
    let pinned = r.route("/contoso").unwrap().1;
    assert_eq!(&*r.tenant(pinned, Some(hv(GUID_A))).unwrap().id, GUID_B);
}

#[test]
fn home_selects_the_credentials_own_tenant() {
    let r = router("");
    let xdr = r.route("/api").unwrap().1;
    let t = r.tenant(xdr, Some(hv("HOME"))).unwrap();
    assert_eq!((&*t.id, &*t.label), (GUID_A, "home"));
}

#[test]
fn a_path_tenant_must_agree_with_the_header_and_the_pin() {
    let r = router("");
    let xdr = r.route("/api").unwrap().1;
    let t = r.scoped_tenant(xdr, None, Some("contoso")).unwrap();
    assert_eq!(&*t.id, GUID_B);
    let t = r
        .scoped_tenant(xdr, Some(hv(GUID_B)), Some("contoso"))
        .unwrap();
    assert_eq!(&*t.id, GUID_B);
    assert!(matches!(
        r.scoped_tenant(xdr, Some(hv("home")), Some("contoso")),
        Err(ProxyError::TenantConflict)
    ));
    assert!(matches!(
        r.scoped_tenant(xdr, None, Some("fabrikam")),
        Err(ProxyError::TenantNotAllowed)
    ));
    let pinned = r.route("/contoso").unwrap().1;
    assert!(matches!(
        r.scoped_tenant(pinned, None, Some("home")),
        Err(ProxyError::TenantConflict)
    ));
    assert_eq!(
        &*r.scoped_tenant(pinned, None, Some(GUID_B)).unwrap().id,
        GUID_B
    );
}

#[test]
fn tenant_scoped_paths_split_into_tenant_and_route_path() {
    assert_eq!(
        split_tenant_path("/tenants/contoso/api/incidents"),
        Some(("contoso", "/api/incidents"))
    );
    assert_eq!(
        split_tenant_path("/tenants/contoso"),
        Some(("contoso", "/"))
    );
    assert_eq!(split_tenant_path("/tenants/"), Some(("", "/")));
    assert_eq!(split_tenant_path("/tenants"), None);
    assert_eq!(split_tenant_path("/api/tenants/x"), None);
}

#[test]
fn links_name_the_alias_or_the_guid_of_an_unlisted_tenant() {
    let r = router(r#"any = "*""#);
    let xdr = r.route("/api").unwrap().1;
    let alias = r.tenant(xdr, Some(hv(GUID_B))).unwrap();
    assert_eq!(tenant_path_name(&alias), "contoso");
    let unlisted = r.tenant(xdr, Some(hv(GUID_C))).unwrap();
    assert_eq!(tenant_path_name(&unlisted), GUID_C);
}

#[test]
fn unknown_tenants_are_refused_and_malformed_ones_are_bad() {
    let r = router("");
    let xdr = r.route("/api").unwrap().1;
    assert!(matches!(
        r.tenant(xdr, Some(hv(GUID_C))),
        Err(ProxyError::TenantNotAllowed)
    ));
    assert!(matches!(
        r.tenant(xdr, Some(hv("fabrikam"))),
        Err(ProxyError::TenantNotAllowed)
    ));
    for bad in ["", "a b", "x/../y", "tenant;drop", "ü"] {
        let v = bad.as_bytes();
        assert!(
            matches!(r.tenant(xdr, Some(v)), Err(ProxyError::BadTenant)),
            "{bad:?}"
        );
    }
}

/// `str::trim` took CR, LF and Unicode spaces too, so `resolve("contoso\r\n")` picked
/// contoso (found by `tests/properties`); only the header's own spaces and tabs are trimmed.
#[test]
fn only_spaces_and_tabs_are_trimmed_from_a_tenant_name() {
    let r = router("");
    let policy = &r.policies[0];
    assert_eq!(&*policy.resolve(" \tcontoso\t ").unwrap().id, GUID_B);
    for bad in [
        "contoso\r\n",
        "\ncontoso",
        "contoso\0",
        "contoso\u{a0}",
        "\u{3000}contoso",
    ] {
        assert!(
            matches!(policy.resolve(bad), Err(ProxyError::BadTenant)),
            "{bad:?}"
        );
    }
    assert!(matches!(
        policy.resolve(&"a".repeat(257)),
        Err(ProxyError::BadTenant)
    ));
}

#[test]
fn star_admits_any_guid_but_not_any_name() {
    let r = router(r#"any = "*""#);
    let xdr = r.route("/api").unwrap().1;
    let t = r.tenant(xdr, Some(hv(GUID_C))).unwrap();
    assert_eq!((&*t.id, &*t.label), (GUID_C, "*"));
    assert!(matches!(
        r.tenant(xdr, Some(hv("fabrikam"))),
        Err(ProxyError::TenantNotAllowed)
    ));
}

#[test]
fn the_shipped_config_routes_each_quota_to_its_limit() {
    let env = |k: &str| match k {
        "AZURE_TENANT_ID" => Some(GUID_A.to_string()),
        "AZURE_CLIENT_ID" => Some("c".to_string()),
        "AZURE_CLIENT_SECRET" => Some("s".to_string()),
        _ => None,
    };
    let config = Config::from_toml(include_str!("../../proxy.toml"), &env).unwrap();
    let r = Router::build(&config, &HashMap::from([("app".to_string(), 0)]));
    let limits: Vec<&String> = config.rate_limit.keys().collect();
    let limit_of = |path: &str| {
        r.route(path)
            .unwrap()
            .1
            .rate_limit
            .map(|i| limits[i].as_str())
    };
    assert_eq!(limit_of("/api/incidents"), Some("incidents"));
    assert_eq!(limit_of("/api/incidents/123"), Some("incidents"));
    assert_eq!(limit_of("/api/advancedhunting/run"), Some("hunting"));
    assert_eq!(limit_of("/mde/api/machines"), Some("mde"));
    assert_eq!(
        limit_of("/mde/api/advancedqueries/run"),
        Some("mde-hunting")
    );
    assert_eq!(limit_of("/graph/v1.0/security/incidents"), Some("graph"));
    assert_eq!(
        limit_of("/api/alerts"),
        Some("defender"),
        "the catch-all has a quota too"
    );
    assert!(r.routes().iter().all(|route| route.rate_limit.is_some()));
    let hunting = r.route("/mde/api/advancedqueries/run").unwrap().1;
    assert_eq!(
        hunting.upstream_path("/mde/api/advancedqueries/run"),
        "/api/advancedqueries/run"
    );
}
