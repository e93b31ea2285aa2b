//! The checks that keep the proxy from being an open proxy, a DNS-rebinding target or a CSRF
//! target: the method, the Host (and an absolute-form target's authority), the Origin and
//! `Sec-Fetch-Site` of browser requests, the inbound key, and paths that could escape a route's
//! prefix. They read the request as it arrived, before any header is removed, so a
//! `Connection` header that names one of these headers cannot hide it.

use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderMap, Method, header};

use super::access_log::Trace;
use super::check::CheckLayer;
use super::{INBOUND_KEY_HEADER, Request};
use crate::error::ProxyError;
use crate::routing::path_of;
use crate::runtime::Runtime;

/// Sent by browsers; `cross-site` means a foreign page is driving the request.
const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

/// The Host the request was checked against, in its extensions: links are rewritten to it.
#[derive(Debug, Clone)]
pub struct CheckedHost(pub Authority);

/// The `[clients.NAME]` whose key the request carried, in its extensions.
#[derive(Debug, Clone)]
pub struct ClientName {
    /// Its index in `Runtime::clients`.
    pub index: usize,
    /// Its name.
    pub name: std::sync::Arc<str>,
}

/// Methods a refusal of CONNECT or TRACE names in its `Allow` header.
const FORWARDED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Refuses requests that fail the checks; see the module doc.
pub fn layer(rt: &Arc<Runtime>) -> CheckLayer {
    CheckLayer::new(rt, admit)
}

/// Checks `req`, and notes the checked Host and the calling client in its extensions.
fn admit(rt: &Runtime, req: &mut Request) -> Result<(), ProxyError> {
    let (host, client) = check(rt, req)?;
    req.extensions_mut().insert(host);
    if let Some(client) = client {
        if let Some(trace) = req.extensions().get::<Trace>() {
            trace.set_client(&client.name);
        }
        req.extensions_mut().insert(client);
    }
    Ok(())
}

/// Checks `req`; gives back the Host it was checked against, and the client whose key it
/// carried.
pub fn check(rt: &Runtime, req: &Request) -> Result<(CheckedHost, Option<ClientName>), ProxyError> {
    // CONNECT would make this a forward proxy; an upstream that echoes a TRACE would send the
    // bearer back to the client (RFC 9110 §9.3.8).
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed {
            allow: FORWARDED_METHODS.into(),
        });
    }
    let host = checked_host(rt, req)?;
    if req.uri().scheme().is_some_and(|s| s.as_str() != "http") {
        return Err(ProxyError::BadRequest("only plain http is served"));
    }
    check_origin(rt, req.headers())?;
    let client = check_key(rt, req.headers())?;
    check_path(path_of(req.uri()))?;
    Ok((CheckedHost(host), client))
}

/// The inbound key: with `[clients]`, it must be one client's (which one is the caller);
/// else, with `server.inbound_key`, it must be that one.
fn check_key(rt: &Runtime, headers: &HeaderMap) -> Result<Option<ClientName>, ProxyError> {
    if rt.clients.is_empty() && rt.inbound_key.is_none() {
        return Ok(None);
    }
    let given = only(headers, &INBOUND_KEY_HEADER)
        .map_err(|()| ProxyError::Unauthenticated)?
        .map_or(&[][..], |v| v.as_bytes());
    if let Some(key) = &rt.inbound_key {
        return match key.constant_time_eq(given) {
            true => Ok(None),
            false => Err(ProxyError::Unauthenticated),
        };
    }
    // Every key is compared, so the time taken does not tell which one came close.
    let mut found = None;
    for (index, c) in rt.clients.iter().enumerate() {
        if c.key.constant_time_eq(given) && found.is_none() {
            found = Some(ClientName {
                index,
                name: c.name.clone(),
            });
        }
    }
    found.map(Some).ok_or(ProxyError::Unauthenticated)
}

/// The one value of header `name`, if any; `Err` when it is there more than once.
fn only<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a http::HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// The request's authority: its one `Host` header, which must parse as `host[:port]` and agree
/// with an absolute-form target's authority (RFC 9112 §3.2.2), or that authority alone (an
/// HTTP/2 request's `:authority`). Its host must be an allowed one.
fn checked_host(rt: &Runtime, req: &Request) -> Result<Authority, ProxyError> {
    let header = only(req.headers(), &header::HOST)
        .map_err(|()| ProxyError::BadHost)?
        .map(|v| parse_authority(v.as_bytes()).ok_or(ProxyError::BadHost))
        .transpose()?;
    let host = match (header, req.uri().authority()) {
        (Some(h), Some(a)) if !h.as_str().eq_ignore_ascii_case(a.as_str()) => {
            return Err(ProxyError::BadHost);
        }
        (Some(h), _) => h,
        (None, Some(a)) => a.clone(),
        (None, None) => return Err(ProxyError::BadHost),
    };
    if host.as_str().contains('@') || !host_allowed(rt, host.host()) {
        return Err(ProxyError::BadHost);
    }
    Ok(host)
}

/// `host[:port]` with no user information.
fn parse_authority(bytes: &[u8]) -> Option<Authority> {
    if bytes.is_empty() || bytes.contains(&b'@') {
        return None;
    }
    Authority::try_from(bytes).ok()
}

/// Is `host` (no port; an IPv6 address in brackets) one of the allowed names?
fn host_allowed(rt: &Runtime, host: &str) -> bool {
    rt.allowed_hosts
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host))
}

/// A browser page from a foreign origin must not drive the proxy (CSRF, DNS rebinding).
fn check_origin(rt: &Runtime, headers: &HeaderMap) -> Result<(), ProxyError> {
    let cross_site = headers
        .get_all(SEC_FETCH_SITE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        return Err(ProxyError::BadOrigin);
    }
    for origin in headers.get_all(header::ORIGIN) {
        let uri: Option<http::Uri> = origin.to_str().ok().and_then(|o| o.parse().ok());
        let allowed = uri
            .as_ref()
            .and_then(|u| u.scheme().and(u.authority()))
            .is_some_and(|a| !a.as_str().contains('@') && host_allowed(rt, a.host()));
        if !allowed {
            return Err(ProxyError::BadOrigin);
        }
    }
    Ok(())
}

/// Rejects paths that could escape a route's prefix upstream: dot segments, plain or
/// percent-encoded, encoded slashes and backslashes.
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest("the path must start with /"));
    }
    let bad = Err(ProxyError::BadRequest(
        "the path contains dot segments or encoded separators",
    ));
    let encoded = |name: &[u8]| {
        path.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(name))
    };
    if path.contains('\\') || encoded(b"%2f") || encoded(b"%5c") {
        return bad;
    }
    if path.split('/').any(is_dot_segment) {
        return bad;
    }
    Ok(())
}

/// `.` or `..`, with any of the dots written `%2e` or `%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let (mut rest, mut dots) = (segment.as_bytes(), 0);
    while !rest.is_empty() && dots < 3 {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
    }
    rest.is_empty() && (1..=2).contains(&dots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_encoded_separators_are_refused() {
        for bad in [
            "/api/../x",
            "/api/./x",
            "/api/%2e%2E/x",
            "/api/.%2e",
            "/api/%2E/x",
            "/api/..",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "x",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/",
            "/api/incidents",
            "/api/a.b",
            "/api/...",
            "/a%20b",
            "/api/.x",
            "/api/%2e%2e%2e",
            "/api/%2ex",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn an_authority_with_user_information_is_not_a_host() {
        assert!(parse_authority(b"evil@127.0.0.1").is_none());
        assert!(parse_authority(b"").is_none());
        assert_eq!(
            parse_authority(b"127.0.0.1:8080").unwrap().host(),
            "127.0.0.1"
        );
        assert_eq!(parse_authority(b"[::1]:8080").unwrap().host(), "[::1]");
    }
}
