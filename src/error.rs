//! `ProxyError`: every error the proxy answers itself, and the one place that turns it into a
//! Defender-shaped response with `x-defender-proxy-error`.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// Header naming the error code on responses the proxy makes itself.
pub const ERROR_HEADER: &str = "x-defender-proxy-error";

/// An error answered by the proxy, grouped by whose fault it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    // -- the client's request --
    /// No route's prefix matches the path.
    #[error("no route matches this path")]
    NoRoute,
    /// The tenant header is not a GUID or a known alias.
    #[error("the tenant header is not a tenant GUID or a known alias")]
    BadTenant,
    /// The tenant of a tenant-scoped path differs from the tenant header's or the route's.
    #[error("the tenant in the path differs from the tenant header or the route's tenant")]
    TenantConflict,
    /// The Host header is not one the proxy serves.
    #[error("the Host header is not allowed; see server.allowed_hosts")]
    BadHost,
    /// A browser page from another origin sent the request.
    #[error("cross-origin requests are not allowed")]
    BadOrigin,
    /// The request line or path is not acceptable.
    #[error("the request is malformed: {0}")]
    BadRequest(&'static str),
    /// CONNECT (the proxy is not a forward proxy), TRACE (an echoing upstream would send the
    /// bearer back), or a method the route does not forward.
    #[error("this method is not allowed here; allowed: {allow}")]
    MethodNotAllowed {
        /// The `Allow` header: the methods that are.
        allow: std::borrow::Cow<'static, str>,
    },
    /// The client's key does not grant this route or method.
    #[error("this client may not use this route or method")]
    ClientNotAllowed,
    /// The request body stalled: no data for `server.body_timeout_secs`.
    #[error("the request body stopped arriving")]
    RequestTimeout,
    /// The inbound key is missing or wrong.
    #[error("missing or wrong x-defender-proxy-key")]
    Unauthenticated,
    /// The tenant is valid but not allowed for the route's credential.
    #[error("this tenant is not allowed for the route's credential")]
    TenantNotAllowed,
    /// The request body is over `max_request_body_bytes`.
    #[error("the request body is larger than the configured limit")]
    BodyTooLarge,
    /// The local rate limit would make the request wait longer than `max_wait_secs`.
    #[error("rate limit {limit} reached; retry after {} s", retry_after_secs(*.retry_after))]
    RateLimited {
        /// The limit's name.
        limit: String,
        /// Time until a slot frees.
        retry_after: Duration,
    },

    // -- the identity provider --
    /// Entra ID refused the credential; `message` names the AADSTS code, never a secret.
    #[error("Entra ID refused the credential: {message}")]
    TokenRejected {
        /// Safe explanation with the AADSTS code.
        message: String,
    },
    /// Entra ID could not be reached or kept failing.
    #[error("Entra ID is unavailable: {message}")]
    TokenUnavailable {
        /// Safe explanation.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },

    // -- the upstream API --
    /// The upstream could not be reached or broke the connection.
    #[error("the upstream API could not be reached")]
    UpstreamUnavailable,
    /// The upstream did not answer within `request_timeout_secs`.
    #[error("the upstream API did not answer in time")]
    UpstreamTimeout,

    // -- the proxy itself --
    /// A bug or an unexpected state; details are logged, not returned.
    #[error("internal error in the proxy")]
    Internal,
}

impl ProxyError {
    /// HTTP status and code. Exhaustive on purpose: a new variant must choose its status.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "NoRoute"),
            ProxyError::BadTenant => (StatusCode::BAD_REQUEST, "BadTenant"),
            ProxyError::TenantConflict => (StatusCode::BAD_REQUEST, "TenantConflict"),
            ProxyError::BadHost => (StatusCode::BAD_REQUEST, "BadHost"),
            ProxyError::BadOrigin => (StatusCode::FORBIDDEN, "BadOrigin"),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ProxyError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
            }
            ProxyError::ClientNotAllowed => (StatusCode::FORBIDDEN, "ClientNotAllowed"),
            ProxyError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
            ProxyError::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthenticated"),
            ProxyError::TenantNotAllowed => (StatusCode::FORBIDDEN, "TenantNotAllowed"),
            ProxyError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "BodyTooLarge"),
            ProxyError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RateLimited"),
            ProxyError::TokenRejected { .. } => (StatusCode::BAD_GATEWAY, "TokenRejected"),
            ProxyError::TokenUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "TokenUnavailable")
            }
            ProxyError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "UpstreamUnavailable"),
            ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout"),
            ProxyError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        }
    }

    /// `Retry-After` for the errors that have one.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::RateLimited { retry_after, .. }
            | ProxyError::TokenUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The Defender-shaped response; `request_id` becomes the error's `target`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({
            "error": { "code": code, "message": self.to_string(), "target": request_id }
        });
        let mut resp = Response::new(body::full(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(code));
        if let Some(after) = self.retry_after() {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        if let ProxyError::MethodNotAllowed { allow } = &self {
            if let Ok(v) = HeaderValue::from_str(allow) {
                h.insert(header::ALLOW, v);
            }
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot carry another
            // request (RFC 9110 §15.5.9).
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("DefenderProxyKey"),
            );
        }
        resp
    }
}

/// Whole seconds for `Retry-After`, rounded up so a client never retries early.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_defender_shaped_with_the_code_header() {
        let resp = ProxyError::NoRoute.into_response("req-1");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[ERROR_HEADER], "NoRoute");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "NoRoute");
        assert_eq!(v["error"]["target"], "req-1");
        assert!(v["error"]["message"].as_str().unwrap().contains("no route"));
    }

    #[test]
    fn rate_limited_carries_a_rounded_up_retry_after() {
        let err = ProxyError::RateLimited {
            limit: "incidents".into(),
            retry_after: Duration::from_millis(2100),
        };
        let resp = err.into_response("r");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn retry_after_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
    }
}
