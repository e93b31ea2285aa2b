//! Tests of header hygiene and path checks.

use super::*;
use crate::config::Config;
use crate::routing::Router;
use std::collections::HashMap;

fn router() -> Router {
    let text = r#"
[credentials.app]
type = "client_secret"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "c"
client_secret = "s"
[[route]]
name = "xdr"
prefix = "/"
upstream = "http://127.0.0.1:9999"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
[[route]]
name = "mde"
prefix = "/mde/"
upstream = "https://api.securitycenter.microsoft.com"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"
strip_prefix = true
"#;
    let config = Config::from_toml(text, &|_: &str| None).unwrap();
    Router::build(&config, &HashMap::from([("app".to_string(), 0)]))
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn build(uri: &str, headers: &[(&str, &str)]) -> Request<RequestBody> {
    let r = router();
    let p = parts(uri, headers);
    let route = r.route(p.uri.path()).unwrap().1;
    let out = Outbound {
        route,
        added: crate::upstream::Added {
            raw: None,
            tenant_header: &HeaderName::from_static("x-tenant-id"),
            bearer: &HeaderValue::from_static("Bearer fresh"),
            request_id: &crate::proxy::request_id(Some(HeaderValue::from_static("rid-1"))),
        },
    };
    *build_request(&p, &out, RequestBody::Full(None)).unwrap()
}

/// The head an HTTP/1.1 upstream gets for a GET of `uri` with `headers`, as (name, value)
/// lines: the client's fields through the header map (`as_came` false: an HTTP/2 client's,
/// or a head with too many fields) or as they came.
fn wire(uri: &str, headers: &[(&str, &str)], as_came: bool) -> Vec<(String, String)> {
    let r = router();
    let route = r.route(uri.split('?').next().unwrap()).unwrap().1;
    let (p, raw) = if as_came {
        let fields: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = bytes::Bytes::from(format!("GET {uri} HTTP/1.1\r\n{fields}\r\n"));
        let mut few = [(0, 0, 0, 0); crate::front::FEW_HEADERS];
        let (_, spans) = crate::h1parse::parse_request(&head, &mut few, 64)
            .unwrap()
            .unwrap();
        let spans = spans.to_vec();
        let (raw, _) = crate::rawhead::RawHeaders::parse_into(None, head.clone(), &spans)
            .unwrap()
            .unwrap();
        (parts(uri, &[]), Some(raw))
    } else {
        (parts(uri, headers), None)
    };
    let out = Outbound {
        route,
        added: crate::upstream::Added {
            raw: raw.as_deref(),
            tenant_header: &HeaderName::from_static("x-tenant-id"),
            bearer: &HeaderValue::from_static("Bearer fresh"),
            request_id: &crate::proxy::request_id(Some(HeaderValue::from_static("rid-1"))),
        },
    };
    let req = build_request(&p, &out, RequestBody::Full(None)).unwrap();
    let mut head = Vec::new();
    crate::upstream::request_head(&req, &out.added, &route.upstream.authority, &mut head);
    let text = String::from_utf8(head).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines[0].starts_with("GET "), "{text}");
    lines[1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_ascii_lowercase(), v.to_string())
        })
        .collect()
}

#[test]
fn credentials_tenant_and_hop_by_hop_headers_are_removed() {
    let sent = [
        ("Authorization", "Bearer client-supplied"),
        ("proxy-authorization", "Basic x"),
        ("X-Tenant-Id", "contoso"),
        ("x-defender-proxy-key", "k"),
        ("connection", "keep-alive, x-custom-hop"),
        ("x-custom-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("host", "127.0.0.1:8080"),
        ("Client-Request-Id", "from-client"),
        ("accept", "application/json"),
        ("x-other", "kept"),
    ];
    for as_came in [false, true] {
        let h = wire("/api/incidents", &sent, as_came);
        let all = |name: &str| -> Vec<&str> {
            h.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(all("authorization"), ["Bearer fresh"], "{h:?}");
        assert_eq!(all("client-request-id"), ["rid-1"], "{h:?}");
        assert_eq!(all("host"), ["127.0.0.1:9999"], "{h:?}");
        for gone in [
            "proxy-authorization",
            "x-tenant-id",
            "x-defender-proxy-key",
            "connection",
            "x-custom-hop",
            "keep-alive",
            "te",
            "upgrade",
        ] {
            assert!(all(gone).is_empty(), "{gone} was forwarded: {h:?}");
        }
        assert_eq!(all("accept"), ["application/json"], "{h:?}");
        assert_eq!(all("x-other"), ["kept"], "{h:?}");
    }
}

#[test]
fn uri_targets_the_upstream_with_path_and_query_unchanged() {
    let r = router();
    for (uri, upstream, path) in [
        (
            "/api/incidents?$top=10&$filter=status%20eq%20'Active'",
            "http://127.0.0.1:9999",
            "/api/incidents?$top=10&$filter=status%20eq%20'Active'",
        ),
        (
            "/mde/api/machines?$top=1",
            "https://api.securitycenter.microsoft.com",
            "/api/machines?$top=1",
        ),
    ] {
        let req = build(uri, &[]);
        assert_eq!(req.uri().to_string(), path);
        assert_eq!(
            r.route(uri.split('?').next().unwrap())
                .unwrap()
                .1
                .upstream
                .origin,
            upstream
        );
    }
}

#[test]
fn traversal_and_encoded_separators_are_refused() {
    for bad in [
        "/mde/../api",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E./b",
        "/a%2fb",
        "/a%5cb",
        "/a\\b",
        "/..",
    ] {
        assert!(check_path(bad).is_err(), "{bad}");
    }
    for ok in [
        "/",
        "/api/incidents",
        "/api/files/a.b",
        "/api/x..y",
        "/api/%20",
    ] {
        assert!(check_path(ok).is_ok(), "{ok}");
    }
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
    h.insert("x-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("request-id", HeaderValue::from_static("abc"));
    strip_hop_by_hop(&mut h);
    assert!(
        h.get("x-hop").is_none() && h.get("keep-alive").is_none() && h.get("connection").is_none()
    );
    assert_eq!(h["request-id"], "abc");
    // Each on its own, and in any position.
    for hop in HOP_BY_HOP.iter().cloned() {
        let mut h = HeaderMap::new();
        h.insert("x-before", HeaderValue::from_static("1"));
        h.insert(hop.clone(), HeaderValue::from_static("v"));
        h.insert("x-after", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let kept = hop == header::TRANSFER_ENCODING;
        assert_eq!(h.contains_key(&hop), kept, "{hop}");
        assert_eq!(h.len(), if kept { 3 } else { 2 }, "{hop}");
    }
}

#[test]
fn json_answers_are_recognised_whatever_the_case_and_parameters() {
    let with = |ct: &str| is_json(Some(ct.as_bytes()));
    for ct in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/odata+json;odata.metadata=minimal",
        " application/problem+JSON ",
    ] {
        assert!(with(ct), "{ct}");
    }
    for ct in [
        "text/plain",
        "application/jsonx",
        "json",
        "application/octet-stream",
    ] {
        assert!(!with(ct), "{ct}");
    }
    assert!(!is_json(None));
}
