//! The upstream request: header hygiene, the bearer, the target URI, and the pooled HTTP/1.1
//! and HTTP/2 client that streams bodies both ways and never follows redirects.

use std::time::Duration;

use crate::upstream::UpBody;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::Body as _;

use crate::body::{BodyTooLarge, RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::rawhead::{self, Known};
use crate::rewrite::RewriteState;
use crate::routing::Route;

const HOPS: usize = 9;

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The inbound shared key header; never forwarded.
pub const INBOUND_KEY_HEADER: HeaderName = HeaderName::from_static("x-defender-proxy-key");
/// Microsoft's correlation header, forwarded (or generated) on every request.
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

/// The upstream client of a worker.
pub type HttpClient = crate::upstream::Upstream;

/// What the forwarded request needs besides the client's request.
pub struct Outbound<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// The fields sent besides the map's: the client's as they came, the bearer and the
    /// request ID (the tenant header is never forwarded).
    pub added: crate::upstream::Added<'a>,
}

/// Builds the upstream request (origin-form URI) from the client's method, URI and headers
/// (those of its map: the fields as they came, and the proxy's own, are added as it is sent;
/// see `upstream::Added`).
pub fn build_request(
    parts: &http::request::Parts,
    out: &Outbound<'_>,
    body: RequestBody,
) -> Result<Box<Request<RequestBody>>, ProxyError> {
    let path = out.route.upstream_path(parts.uri.path());
    let unchanged = matches!(&path, std::borrow::Cow::Borrowed(p) if *p == parts.uri.path());
    let pq = match (parts.uri.path_and_query(), parts.uri.query()) {
        (Some(pq), _) if unchanged => Ok(pq.clone()),
        (_, None) => PathAndQuery::try_from(path.as_ref()),
        (_, Some(q)) => PathAndQuery::try_from(format!("{path}?{q}")),
    }
    .map_err(|_| ProxyError::BadRequest("invalid path"))?;
    // Boxed: handed down through the send's layers, where it was copied at each.
    let mut req = Box::new(Request::new(body));
    *req.method_mut() = parts.method.clone();
    // Origin-form: the upstream (the route's) goes to `send` beside it, so that a request
    // copies none of the shared origin's bytes.
    *req.uri_mut() = Uri::from(pq);
    // (An HTTP/1.1 client's fields travel as they came, and its map is empty: the request's
    // own empty map is kept, not replaced by another.)
    if !parts.headers.is_empty() {
        *req.headers_mut() = forwarded_headers(&parts.headers, out);
    }
    Ok(req)
}

/// The client's headers minus hop-by-hop, credentials and proxy-only ones.
fn forwarded_headers(src: &HeaderMap, out: &Outbound<'_>) -> HeaderMap {
    let mut dst = HeaderMap::with_capacity(src.len());
    // A `Connection` saying only close or keep-alive is not kept by the front end, so one is
    // rare: looked for by comparing names (a standard name compares as a number), not hashed.
    let named_in_connection = if src.keys().any(|n| n == header::CONNECTION) {
        connection_tokens(src)
    } else {
        Vec::new()
    };
    for (name, value) in src {
        let drop = HOP_BY_HOP.contains(name)
            || name == header::AUTHORIZATION
            || name == header::HOST
            || name == out.added.tenant_header
            || name == INBOUND_KEY_HEADER
            || name == CLIENT_REQUEST_ID
            || named_in_connection.contains(name);
        if !drop {
            dst.append(name.clone(), value.clone());
        }
    }
    dst
}

/// The extra header names a `Connection` header lists: those not already hop-by-hop (nor
/// `close`), so the usual `keep-alive` / `close` allocate nothing.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// What became of a sent request.
pub enum Sent {
    /// The answer's head.
    Answer(Box<Response<UpBody>>),
    /// A reused connection was closed under the request before any answer; an idempotent
    /// request may be built again and sent on a fresh connection.
    Stale,
}

/// Sends a request to `upstream`, waiting at most `timeout` from `now` (the caller's reading
/// of the clock, just taken) for the answer's head; `fresh` asks for a new connection.
pub async fn send(
    client: &HttpClient,
    upstream: &crate::routing::Upstream,
    req: Box<Request<RequestBody>>,
    added: &crate::upstream::Added<'_>,
    (now, timeout): (tokio::time::Instant, Duration),
    fresh: bool,
) -> Result<Sent, ProxyError> {
    let origin = (&upstream.scheme, &upstream.authority);
    let at = now + timeout;
    // Kept by the HTTP/1 front's connection timer when there is one (see `crate::deadline`);
    // else a timer of its own, taken at the first wait.
    let mut own = None;
    // Pinned in place: boxing it cost an allocation and a copy of its 2 KiB per request.
    let mut request = std::pin::pin!(client.request(origin, req, added, fresh, now));
    let answered = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = request.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(r));
        }
        match crate::deadline::wait_until(at) {
            Some(true) => std::task::Poll::Ready(None),
            Some(false) => std::task::Poll::Pending,
            None => own
                .get_or_insert_with(|| client.deadline(at))
                .poll_elapsed(cx)
                .map(|()| None),
        }
    })
    .await;
    match answered {
        None => Err(ProxyError::UpstreamTimeout),
        Some(Ok(resp)) => Ok(Sent::Answer(resp)),
        Some(Err(failure)) => {
            let e = failure.error;
            if caused_by_body_limit(&*e) {
                return Err(ProxyError::BodyTooLarge);
            }
            tracing::warn!(error = %e, source = ?std::error::Error::source(&*e), stale = failure.stale, "upstream request failed");
            if failure.stale {
                return Ok(Sent::Stale);
            }
            Err(ProxyError::UpstreamUnavailable)
        }
    }
}

fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooLarge>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// JSON bodies up to this size are rewritten whole, keeping an exact `Content-Length`.
const REWRITE_WHOLE_BYTES: u64 = 256 * 1024;

/// The upstream's answer for the client: hop-by-hop headers removed, body streamed, paging
/// links and `Location` rewritten when `rewrite` gives the route and the client's Host. The
/// Host is asked for, and the rewriter built, only when there is something to rewrite; when
/// the Host is `None`, the answer goes on as it came.
pub async fn into_client_response<'h>(
    resp: Box<Response<UpBody>>,
    rewrite: Option<(&Route, &(dyn Fn() -> Option<&'h str> + Sync))>,
    head: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, mut body) = (*resp).into_parts();
    // An HTTP/1.1 answer's own fields travel with its body (hop-by-hop ones left out already),
    // see `crate::rawhead`; the map has those of an HTTP/2 answer.
    strip_hop_by_hop(&mut parts.headers);
    let as_it_came = |parts, body| Ok(Response::from_parts(parts, ResponseBody::Upstream(body)));
    let Some((route, host)) = rewrite else {
        return as_it_came(parts, body);
    };
    let location =
        field(&parts.headers, &body, Known::Location).and_then(|v| std::str::from_utf8(v).ok());
    if let Some(location) = location {
        let Some(host) = host() else {
            return as_it_came(parts, body);
        };
        if let Some(v) = route
            .link_rewriter(host)
            .rewrite_location(location)
            .and_then(|l| HeaderValue::try_from(l).ok())
        {
            parts.headers.insert(header::LOCATION, v);
        }
    }
    if head || !is_json(field(&parts.headers, &body, Known::ContentType)) || body.is_end_stream() {
        return as_it_came(parts, body);
    }
    let length =
        field(&parts.headers, &body, Known::ContentLength).and_then(crate::front::parse_length);
    if length.is_some_and(|n| n <= REWRITE_WHOLE_BYTES) {
        let fields = body.take_fields();
        let whole = read_whole(body).await?;
        let link = crate::rewrite::may_contain_link(&whole);
        let Some(host) = link.then(host).flatten() else {
            return Ok(Response::from_parts(
                parts,
                ResponseBody::Full(Some(whole), fields),
            ));
        };
        // The map's length replaces the raw one.
        let mut state = RewriteState::new(route.link_rewriter(host));
        let mut out = state.push(&whole).to_vec();
        out.extend_from_slice(&state.finish());
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        return Ok(Response::from_parts(
            parts,
            ResponseBody::Full(Some(out.into()), fields),
        ));
    }
    let Some(host) = host() else {
        return as_it_came(parts, body);
    };
    // The length changes as the body streams: no Content-Length, from either set of fields.
    rawhead::materialize(&mut parts.headers, body.take_fields());
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        ResponseBody::Rewritten {
            body,
            state: Box::new(RewriteState::new(route.link_rewriter(host))),
            done: false,
        },
    ))
}

/// The first value of a known field of an answer.
fn field<'a>(headers: &'a HeaderMap, body: &'a UpBody, known: Known) -> Option<&'a [u8]> {
    rawhead::get(headers, body.fields(), known)
}

/// A small body, read whole: a body in one piece (the usual case) is passed on as it came,
/// without copying or collecting it in a list.
async fn read_whole(mut body: UpBody) -> Result<bytes::Bytes, ProxyError> {
    use http_body_util::BodyExt;
    let mut first = bytes::Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame
            .map_err(|_| ProxyError::UpstreamUnavailable)?
            .into_data()
        else {
            continue; // trailers: not passed on with a body read whole
        };
        match &mut joined {
            None if first.is_empty() => first = data,
            None => {
                let mut all = bytes::BytesMut::with_capacity(first.len() + data.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
            Some(all) => all.extend_from_slice(&data),
        }
    }
    Ok(joined.map_or(first, bytes::BytesMut::freeze))
}

/// An upstream answer whose body was read (to learn when to retry) for the client.
pub fn read_into_client_response(resp: Response<bytes::Bytes>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, ResponseBody::full(body))
}

/// Is the `Content-Type` JSON (`application/json` or `*/*+json`)?
fn is_json(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        // The usual one, as bytes: the split and the trim below cost more than the rest.
        if ct == b"application/json" {
            return true;
        }
        let mime = ct
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        // Compared eight bytes at a time, not one (`eq_ignore_ascii_case`).
        crate::rawhead::is_name(mime, b"application/json")
            || mime
                .last_chunk::<5>()
                .is_some_and(|end| crate::rawhead::is_name(end, b"+json"))
    })
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to see which are there (an answer usually has `Connection` at most): a
    // removal costs a hash and a probe, nine of them more than the rest of the answer's
    // handling.
    let mut present = [false; HOPS];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let named = if present[0] {
        connection_tokens(headers)
    } else {
        Vec::new()
    };
    for (name, _) in HOP_BY_HOP
        .iter()
        .zip(present)
        .filter(|(n, there)| *there && **n != header::TRANSFER_ENCODING)
    {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

/// Rejects paths that could escape a route's prefix upstream: dot segments, plain or
/// percent-encoded, encoded slashes and backslashes.
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest("the path must start with /"));
    }
    // Most paths have neither dots, escapes nor backslashes: nothing more to look at.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(());
    }
    let bad = Err(ProxyError::BadRequest(
        "the path contains dot segments or encoded separators",
    ));
    let lower_has = |needle: &[u8]| {
        path.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if path.contains('\\') || lower_has(b"%2f") || lower_has(b"%5c") {
        return bad;
    }
    if path.split('/').any(is_dot_segment) {
        return bad;
    }
    Ok(())
}

/// `.` or `..`, with any of the dots written `%2e` or `%2E`.
fn is_dot_segment(seg: &str) -> bool {
    let mut dots = 0;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests;
