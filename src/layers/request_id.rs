//! `client-request-id`: the client's when it is sane, else a new UUID. It goes upstream (so
//! Microsoft support can find the request), into the logs and error bodies, and back on the
//! response unless the upstream sent its own.

use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::Map;
use http::HeaderValue;
use tower::{Layer, Service};

use super::{Request, Response};

/// Microsoft's correlation header.
pub const CLIENT_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("client-request-id");

/// A request's ID, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's `client-request-id` when it is 1 to 128 letters, digits, `-`, `_` or `.`;
    /// else a new random UUID.
    pub fn of(sent: Option<&HeaderValue>) -> RequestId {
        let sane = |v: &&HeaderValue| {
            (1..=128).contains(&v.len())
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match sent.filter(sane) {
            Some(v) => RequestId(v.clone()),
            None => {
                // Random bytes from a fast, non-cryptographic generator: an ID to find a
                // request by, not a secret.
                let random = fastrand::u128(..).to_le_bytes();
                let made = uuid::Builder::from_random_bytes(random)
                    .into_uuid()
                    .hyphenated()
                    .to_string();
                RequestId(HeaderValue::try_from(made).unwrap_or(HeaderValue::from_static("-")))
            }
        }
    }

    /// Its text (ASCII either way).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

/// Sets the request ID; see the module doc.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> SetRequestId<S> {
        SetRequestId(inner)
    }
}

/// The service of `RequestIdLayer`.
#[derive(Debug, Clone)]
pub struct SetRequestId<S>(S);

type AddToResponse<F, E> =
    Map<F, Box<dyn FnOnce(Result<Response, E>) -> Result<Response, E> + Send>>;

impl<S> Service<Request> for SetRequestId<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AddToResponse<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = RequestId::of(req.headers().get(CLIENT_REQUEST_ID));
        req.headers_mut().insert(CLIENT_REQUEST_ID, id.0.clone());
        req.extensions_mut().insert(id.clone());
        self.0.call(req).map(Box::new(move |result| {
            result.map(|mut resp| {
                if !resp.headers().contains_key(CLIENT_REQUEST_ID) {
                    resp.headers_mut().insert(CLIENT_REQUEST_ID, id.0);
                }
                resp
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_request_id_is_kept_and_any_other_replaced() {
        let kept = RequestId::of(Some(&HeaderValue::from_static("my-script_run.42")));
        assert_eq!(kept.as_str(), "my-script_run.42");
        for bad in ["", "with space", "semi;colon", &"x".repeat(129)] {
            let made = RequestId::of(Some(&HeaderValue::from_str(bad).unwrap()));
            let parsed = uuid::Uuid::try_parse(made.as_str()).expect(bad);
            assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        }
        assert_ne!(RequestId::of(None).as_str(), RequestId::of(None).as_str());
    }
}
