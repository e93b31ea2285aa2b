//! Header hygiene, in one place: the hop-by-hop headers of either side never cross the proxy
//! (RFC 9110 §7.6.1), nor do the headers a `Connection` header names; the client's own
//! credentials, the inbound key and the tenant header never go upstream. Framing is hyper's:
//! it writes `Transfer-Encoding` or `Content-Length` for each side itself.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::Map;
use http::header::{self, HeaderMap, HeaderName};
use tower::{Layer, Service};

use super::{INBOUND_KEY_HEADER, Request, Response};
use crate::error::ProxyError;
use crate::runtime::Runtime;

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), and
/// `Keep-Alive` and `Proxy-Connection`, which older clients send in the same sense.
pub const HOP_BY_HOP: [HeaderName; 9] = [
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

/// Removes the hop-by-hop headers, and those `Connection` names. A `Content-Length` beside a
/// `Transfer-Encoding` goes too: the transfer coding framed the message, and the length is
/// not to be trusted or sent on (RFC 9112 §6.3).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_with(headers, &[]);
}

/// `remove_hop_by_hop`, and the headers named in `also`. What goes is found in one pass over
/// the names the message has, rather than by a lookup of every name that might be there.
fn remove_with(headers: &mut HeaderMap, also: &[&HeaderName]) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) || also.contains(&name) {
            doomed.push(name.clone());
        }
    }
    if doomed.contains(&header::TRANSFER_ENCODING) {
        doomed.push(header::CONTENT_LENGTH);
    }
    if doomed.contains(&header::CONNECTION) {
        let named = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
        doomed.extend(named);
    }
    for name in &doomed {
        headers.remove(name);
    }
}

/// Cleans the request going up and the response coming back; see the module doc.
#[derive(Clone)]
pub struct HeadersLayer {
    tenant_header: HeaderName,
}

impl HeadersLayer {
    /// For config `rt` (its tenant header).
    pub fn new(rt: &Arc<Runtime>) -> Self {
        HeadersLayer {
            tenant_header: rt.tenant_header.clone(),
        }
    }
}

impl<S> Layer<S> for HeadersLayer {
    type Service = CleanHeaders<S>;
    fn layer(&self, inner: S) -> CleanHeaders<S> {
        CleanHeaders {
            inner,
            tenant_header: self.tenant_header.clone(),
        }
    }
}

/// The service of `HeadersLayer`.
#[derive(Clone)]
pub struct CleanHeaders<S> {
    inner: S,
    tenant_header: HeaderName,
}

type Cleaned<F> = Map<F, fn(Result<Response, ProxyError>) -> Result<Response, ProxyError>>;

impl<S> Service<Request> for CleanHeaders<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = Cleaned<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The upstream's Host comes from its URI; the client's credentials and the proxy's
        // own headers stay here.
        remove_with(
            req.headers_mut(),
            &[
                &header::HOST,
                &header::AUTHORIZATION,
                &INBOUND_KEY_HEADER,
                &self.tenant_header,
            ],
        );
        self.inner.call(req).map(|result| {
            result.map(|mut resp| {
                remove_hop_by_hop(resp.headers_mut());
                resp
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("te", "trailers"),
        ] {
            h.append(n, v.parse().unwrap());
        }
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[tokio::test]
    async fn the_client_credentials_and_proxy_headers_stay_here_and_hop_by_hop_ones_both_ways() {
        use std::sync::Mutex;
        let seen = Arc::new(Mutex::new(HeaderMap::new()));
        let upstream = tower::service_fn({
            let seen = seen.clone();
            move |req: Request| {
                *seen.lock().unwrap() = req.headers().clone();
                async {
                    Ok::<_, ProxyError>(
                        http::Response::builder()
                            .header("connection", "keep-alive, x-up-secret")
                            .header("keep-alive", "timeout=5")
                            .header("x-up-secret", "1")
                            .header("x-up-kept", "2")
                            .body(crate::body::empty())
                            .unwrap(),
                    )
                }
            }
        });
        let mut clean = CleanHeaders {
            inner: upstream,
            tenant_header: HeaderName::from_static("x-tenant"),
        };
        let req = http::Request::builder()
            .header("host", "127.0.0.1:8080")
            .header("authorization", "Bearer client-own")
            .header("x-defender-proxy-key", "k")
            .header("x-tenant", "contoso")
            .header("proxy-connection", "keep-alive")
            .header("accept", "application/json")
            .body(crate::body::empty())
            .unwrap();
        let resp = clean.call(req).await.unwrap();
        let sent: Vec<_> = seen.lock().unwrap().keys().map(|k| k.to_string()).collect();
        assert_eq!(sent, ["accept"]);
        let back: Vec<_> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(back, ["x-up-kept"]);
    }
}
