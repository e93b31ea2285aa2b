//! The request path: checks → route → tenant → token → forward → response, with every error
//! turned into a response in one place (`handle`), and one access-log line per request.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use tokio::time::Instant;

use crate::Worker;
use crate::body::{BodyDone, BodyTooLarge, ClientBody, RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::exchange::{Answer, Exchange};
use crate::forward::{self, CLIENT_REQUEST_ID, INBOUND_KEY_HEADER};
use crate::rawhead::{self, Known, RawHeaders, visible, visible_bytes};
use crate::routing::Tenant;
use crate::runtime::Runtime;

/// The upstream's own request ID, logged.
/// Sent by browsers; `cross-site` means a foreign page is driving the request.
const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

/// Request bodies up to this size are kept so the request can be replayed after a 401.
pub const REPLAY_KEEP_BYTES: usize = 64 * 1024;

/// What the access log and metrics learn about a request on its way.
#[derive(Default)]
struct Trace<'a> {
    route: Option<usize>,
    tenant: Option<Cow<'a, Tenant>>,
    upstream_latency: Option<Duration>,
    upstream_request_id: Option<HeaderValue>,
}

/// Serves one request; never fails and never panics outward. Gives back the request ID with
/// the response: the writer sends it as `client-request-id` when the response has none (set
/// in the response's map, it cost the map's first allocation on every request).
///
/// `rt`: the current config (the request keeps it to its end). `raw`: the request's fields as
/// they came (HTTP/1.1), when its header map is empty.
pub async fn handle(
    worker: &Worker,
    rt: &Runtime,
    req: Box<Request<ClientBody>>,
    raw: Option<&RawHeaders>,
) -> (Response<ResponseBody>, RequestId) {
    let state = &*worker.state;
    // Read only for the access log: a clock read is not free.
    let started = rt.access_log.then(Instant::now);
    let (parts, incoming) = (*req).into_parts();
    let named = Named::of(&parts.headers, raw, rt.tenant_header.as_str().as_bytes());
    let request_id = request_id(named.client_request_id.and_then(|v| match raw {
        Some(raw) => raw.shared(v),
        None => parts.headers.get(CLIENT_REQUEST_ID).cloned(),
    }));
    let method = parts.method.clone();
    let path_for_log = rt.access_log.then(|| parts.uri.path().to_string());
    state.metrics.add_inflight(worker.index, 1);
    let mut trace = Trace::default();
    let body_done = BodyDone::new(http_body::Body::is_end_stream(&incoming));
    let request = Incoming {
        parts: &parts,
        raw,
        named,
    };
    let result = proxy(
        worker,
        rt,
        request,
        incoming,
        &request_id,
        &body_done,
        &mut trace,
    )
    .await;
    state.metrics.add_inflight(worker.index, -1);
    // Its text only where needed: checking that it is text costs as much as making it.
    let (mut resp, error) = match result {
        Ok(resp) => (resp, None),
        Err(e) => {
            let code = e.status_and_code().1;
            if matches!(e, ProxyError::Internal) {
                tracing::error!(request_id = request_id.as_str(), "internal error");
            }
            (e.into_response(request_id.as_str()), Some(code))
        }
    };
    match trace.route {
        Some(i) => {
            let m = &rt.route_metrics[i];
            m.count_status(worker.index, resp.status().as_u16());
            if let Some(l) = trace.upstream_latency {
                m.observe_latency(worker.index, l);
            }
        }
        None => state.metrics.count_rejected(error.unwrap_or("Other")),
    }
    if !body_done.get() {
        // Answered before the client's body was read through (refused, or the upstream
        // answered early): the connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let (Some(path), Some(started)) = (path_for_log, started) {
        log_access(
            rt,
            &trace,
            &method,
            &path,
            &resp,
            request_id.as_str(),
            error,
            started.elapsed(),
        );
    }
    (resp, request_id)
}

/// Sets `client-request-id` to the request ID unless the response has one (from the upstream).
pub fn set_request_id(resp: &mut Response<ResponseBody>, request_id: &RequestId) {
    if !rawhead::contains(resp.headers(), resp.body().fields(), Known::ClientRequestId) {
        resp.headers_mut()
            .insert(CLIENT_REQUEST_ID, request_id.to_header_value());
    }
}

#[allow(clippy::too_many_arguments)]
fn log_access(
    rt: &Runtime,
    trace: &Trace<'_>,
    method: &Method,
    path: &str,
    resp: &Response<ResponseBody>,
    request_id: &str,
    error: Option<&'static str>,
    elapsed: Duration,
) {
    let route = trace.route.map(|i| &*rt.router.routes()[i].name);
    let bytes = rawhead::get(resp.headers(), resp.body().fields(), Known::ContentLength)
        .and_then(|v| std::str::from_utf8(v).ok());
    tracing::info!(
        target: "defender_proxy::access",
        request_id,
        method = %method,
        path,
        route,
        tenant = trace.tenant.as_ref().map(|t| &*t.label),
        tenant_id = trace.tenant.as_ref().map(|t| &*t.id),
        status = resp.status().as_u16(),
        error,
        bytes,
        upstream_ms = trace.upstream_latency.map(|d| d.as_millis() as u64),
        total_ms = elapsed.as_millis() as u64,
        upstream_request_id = trace.upstream_request_id.as_ref().and_then(|v| v.to_str().ok()),
        "request"
    );
}

/// The client's request head: its parts, its fields as they came (HTTP/1.1), and the fields
/// the path looks at.
struct Incoming<'r> {
    parts: &'r http::request::Parts,
    raw: Option<&'r RawHeaders>,
    named: Named<'r>,
}

async fn proxy<'a>(
    worker: &Worker,
    rt: &'a Runtime,
    request: Incoming<'_>,
    incoming: ClientBody,
    request_id: &RequestId,
    body_done: &BodyDone,
    trace: &mut Trace<'a>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Incoming { parts, raw, named } = request;
    check_request(rt, parts, &named)?;
    let (index, route) = rt.router.route(parts.uri.path())?;
    trace.route = Some(index);
    let tenant = &**trace.tenant.insert(rt.router.tenant(route, named.tenant)?);
    let body = read_body(rt, named.content_length, incoming, body_done).await?;
    let exchange = Exchange {
        state: &worker.state,
        worker: worker.index,
        client: &worker.client,
        rt,
        route,
        parts,
        raw,
        request_id,
        source: &rt.credentials[route.credential],
        tenant: &tenant.id,
    };
    let answer = exchange.run(body, &mut trace.upstream_latency).await?;
    match answer {
        Answer::Streamed(resp) => {
            trace.upstream_request_id =
                rawhead::value(resp.headers(), resp.body().fields(), Known::RequestId);
            // The client's Host is looked at only when there is a link to rewrite.
            let host = || request_host(parts, named.host);
            let rewrite = route
                .rewrite_links
                .then_some((route, &host as &(dyn Fn() -> Option<_> + Sync)));
            forward::into_client_response(resp, rewrite, parts.method == Method::HEAD).await
        }
        Answer::Read(resp) => {
            // Read whole on the throttling path, with its fields put in the map.
            trace.upstream_request_id = rawhead::value(resp.headers(), None, Known::RequestId);
            Ok(forward::read_into_client_response(resp))
        }
    }
}

/// The request headers the path looks at (the first value of each, as `HeaderMap::get`
/// gives): from the fields as they came, found as the head was parsed; else in one pass over
/// the map (looking them up one by one cost a hash and a probe apiece, more than the pass
/// over a usual request's few headers).
#[derive(Default)]
struct Named<'a> {
    host: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    sec_fetch_site: Option<&'a [u8]>,
    inbound_key: Option<&'a [u8]>,
    tenant: Option<&'a [u8]>,
    content_length: Option<&'a [u8]>,
    client_request_id: Option<&'a [u8]>,
}

impl<'a> Named<'a> {
    /// `tenant_header`: the tenant header's name, lower case.
    fn of(headers: &'a HeaderMap, raw: Option<&'a RawHeaders>, tenant_header: &[u8]) -> Named<'a> {
        if let Some(raw) = raw {
            return Named {
                host: raw.get(Known::Host),
                origin: raw.get(Known::Origin),
                sec_fetch_site: raw.get(Known::SecFetchSite),
                inbound_key: raw.get(Known::InboundKey),
                tenant: raw.find(tenant_header),
                content_length: raw.get(Known::ContentLength),
                client_request_id: raw.get(Known::ClientRequestId),
            };
        }
        let mut n = Named::default();
        for (name, value) in headers {
            let slot = if name == header::HOST {
                &mut n.host
            } else if name == header::CONTENT_LENGTH {
                &mut n.content_length
            } else if name == header::ORIGIN {
                &mut n.origin
            } else if name == SEC_FETCH_SITE {
                &mut n.sec_fetch_site
            } else if name.as_str().as_bytes() == tenant_header {
                &mut n.tenant
            } else if name == INBOUND_KEY_HEADER {
                &mut n.inbound_key
            } else if name == CLIENT_REQUEST_ID {
                &mut n.client_request_id
            } else {
                continue;
            };
            slot.get_or_insert(value.as_bytes());
        }
        n
    }
}

/// Reads the body up to the replay buffer, refusing it when over the limit.
async fn read_body(
    rt: &Runtime,
    content_length: Option<&[u8]>,
    incoming: ClientBody,
    done: &BodyDone,
) -> Result<RequestBody, ProxyError> {
    let length = content_length.and_then(crate::front::parse_length);
    if length.is_some_and(|n| n > rt.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge);
    }
    RequestBody::read(incoming, REPLAY_KEEP_BYTES, rt.max_body_bytes, done)
        .await
        .map_err(|e| {
            if e.is::<BodyTooLarge>() {
                ProxyError::BodyTooLarge
            } else {
                ProxyError::BadRequest("the request body could not be read")
            }
        })
}

/// The Host the client used (validated by `check_request`).
fn request_host<'a>(parts: &'a http::request::Parts, host: Option<&'a [u8]>) -> Option<&'a str> {
    match host {
        Some(h) => visible(h),
        None => parts.uri.authority().map(|a| a.as_str()),
    }
}

/// The checks that keep the proxy from being an open proxy or a DNS-rebinding target.
fn check_request(
    rt: &Runtime,
    req: &http::request::Parts,
    named: &Named<'_>,
) -> Result<(), ProxyError> {
    if req.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let host_header = named
        .host
        .map(|v| visible_bytes(v).ok_or(ProxyError::BadHost))
        .transpose()?;
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    let host = match (host_header, authority) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => return Err(ProxyError::BadHost),
        (Some(h), _) => h,
        (None, Some(a)) => a,
        (None, None) => return Err(ProxyError::BadHost),
    };
    if !host_allowed(rt, host) {
        return Err(ProxyError::BadHost);
    }
    if req.uri.scheme().is_some_and(|s| s.as_str() != "http") {
        return Err(ProxyError::BadRequest("only plain http is served"));
    }
    check_origin(rt, named)?;
    if let Some(key) = &rt.inbound_key {
        let given = named.inbound_key.unwrap_or_default();
        if !key.constant_time_eq(given) {
            return Err(ProxyError::Unauthenticated);
        }
    }
    forward::check_path(req.uri.path())
}

/// A browser page from a foreign origin must not drive the proxy (CSRF, DNS rebinding).
fn check_origin(rt: &Runtime, named: &Named<'_>) -> Result<(), ProxyError> {
    if named
        .sec_fetch_site
        .is_some_and(|v| v.eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(ProxyError::BadOrigin);
    }
    let Some(origin) = named.origin else {
        return Ok(());
    };
    let origin = visible_bytes(origin).ok_or(ProxyError::BadOrigin)?;
    let host = origin
        .windows(3)
        .position(|w| w == b"://")
        .map(|i| &origin[i + 3..])
        .ok_or(ProxyError::BadOrigin)?;
    if host_allowed(rt, host) {
        Ok(())
    } else {
        Err(ProxyError::BadOrigin)
    }
}

/// Compares the host part (port ignored) with the allowed names.
fn host_allowed(rt: &Runtime, host_port: &[u8]) -> bool {
    let host = match host_port.strip_prefix(b"[") {
        // `[v6]` with the brackets, without the port.
        Some(rest) => rest
            .iter()
            .position(|&b| b == b']')
            .map_or(host_port, |i| &host_port[..i + 2]),
        None => match host_port.iter().rposition(|&b| b == b':') {
            Some(i) => &host_port[..i],
            None => host_port,
        },
    };
    // The allowed names are kept lowercase.
    rt.allowed_hosts
        .iter()
        .any(|a| crate::rawhead::is_name(host, a.as_bytes()))
}

/// The client's `client-request-id` (`sent`) when it is sane, else a new UUID.
pub(crate) fn request_id(sent: Option<HeaderValue>) -> RequestId {
    if let Some(v) = sent {
        let ok = (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            return RequestId(Id::Sent(v));
        }
    }
    RequestId(Id::Made(uuid_v4_text(fastrand::u128(..).to_le_bytes())))
}

/// Two lowercase hex digits for each byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    pairs
};

/// A random (version 4) UUID made of `random`, as hyphenated lowercase text: as the `uuid`
/// crate writes it, with a table of digit pairs (a third of its instructions).
fn uuid_v4_text(mut random: [u8; 16]) -> [u8; 36] {
    random[6] = (random[6] & 0x0f) | 0x40; // version 4
    random[8] = (random[8] & 0x3f) | 0x80; // RFC 9562 variant
    // Where each byte's two digits go: 8-4-4-4-12.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [b'-'; 36];
    for (b, at) in random.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
    out
}

/// A request's ID (`client-request-id`): the client's when sane, else one made here. Kept
/// as text, not as a header value: one made here would cost an allocation and two checks
/// of its bytes per request, and it only goes into heads as bytes and into logs as text.
#[derive(Clone)]
pub struct RequestId(Id);

#[derive(Clone)]
enum Id {
    /// Sane as checked: ASCII letters, digits, `-`, `_` and `.`.
    Sent(HeaderValue),
    /// A hyphenated lowercase UUID.
    Made([u8; 36]),
}

impl RequestId {
    /// Its bytes, as they go into a head.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Id::Sent(v) => v.as_bytes(),
            Id::Made(b) => b,
        }
    }

    /// Its text (for logs and error bodies).
    pub fn as_str(&self) -> &str {
        // ASCII either way.
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// As a header value (for the header maps of HTTP/2).
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.0 {
            Id::Sent(v) => v.clone(),
            Id::Made(b) => HeaderValue::from_bytes(b).unwrap_or(HeaderValue::from_static("-")),
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
