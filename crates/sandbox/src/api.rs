//! The Defender API side: its router, the gate every request passes (count, record, faults,
//! bearer check, rate limit), and Defender-shaped error answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State as AxState};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use super::faults::{ApiFault, aborted_response, fault_status};
use super::ratelimit::{Family, retry_after_secs};
use super::state::State;
use super::time::{iso8601, unix_now};
use super::tokens::{AuthFailure, Caller};
use super::{hunting, lists, testapi};

/// Every `/api/*` and `/v1.0/*` route, behind [`gate`].
pub(super) fn routes(state: Arc<State>) -> Router<Arc<State>> {
    Router::new()
        .merge(lists::routes())
        .merge(hunting::routes())
        .merge(testapi::routes())
        .route("/api/{*rest}", any(not_found))
        .route("/v1.0/{*rest}", any(graph_not_found))
        .layer(middleware::from_fn_with_state(state, gate))
}

/// Counts and records the request, applies an armed fault, checks the bearer token and the
/// rate limit, then hands the caller to the handler as a request extension.
async fn gate(AxState(st): AxState<Arc<State>>, mut req: Request, next: Next) -> Response {
    st.api_requests.fetch_add(1, Ordering::Relaxed);
    st.record(req.method(), req.uri(), req.headers());
    let graph = is_graph(req.uri().path());
    if let Some(fault) = st.api_fault.take() {
        if let Some(response) = fault_response(graph, fault).await {
            return read_body_then(req, response).await;
        }
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match st.tokens.authenticate(authorization, &st.opts.audiences) {
        Ok(caller) => caller,
        Err(failure) => {
            st.rejections.count(failure.label());
            return read_body_then(req, unauthorized(graph, &failure)).await;
        }
    };
    if !tenant_as_expected(&req, &caller.tenant) {
        st.rejections.count("wrong_tenant");
        let message = format!("The access token is for another tenant than {EXPECT_TENANT}.");
        let response = api_error(graph, StatusCode::FORBIDDEN, "Forbidden", &message);
        return read_body_then(req, response).await;
    }
    if let Err(wait) = admit(&st, &caller, req.uri().path()) {
        let secs = retry_after_secs(wait);
        let message = format!("Rate limit is exceeded. Try again in {secs} seconds.");
        let response = api_error(
            graph,
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            &message,
        );
        return read_body_then(req, with_retry_after(response, &secs.to_string())).await;
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Reads the request body (up to 16 MiB) before an early answer, as a front end does, so the
/// client is not cut off mid-upload.
async fn read_body_then(req: Request, response: Response) -> Response {
    let _ = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024).await;
    response
}

/// A test's assertion of the tenant a request is for; a token for another tenant is refused
/// (403) and counted, which is how a soak test learns that a proxy mixed up its tenants.
const EXPECT_TENANT: &str = "x-sandbox-expect-tenant";

fn tenant_as_expected(req: &Request, tenant: &str) -> bool {
    req.headers()
        .get(EXPECT_TENANT)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(tenant.as_bytes()))
}

fn admit(st: &State, caller: &Caller, path: &str) -> Result<(), Duration> {
    let Some(family) = Family::of(path).filter(|_| st.opts.rate_limits) else {
        return Ok(());
    };
    let minute = Duration::from_secs(st.opts.rate_window_secs);
    let who = (caller.client_id.as_str(), caller.tenant.as_str());
    st.limiter
        .admit(who, family, family.quota(&st.opts), minute)
}

async fn fault_response(graph: bool, fault: ApiFault) -> Option<Response> {
    match fault {
        ApiFault::Stall { millis } => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            None
        }
        ApiFault::ResetMidBody => Some(aborted_response(
            br#"{"@odata.context":"sandbox","value":[{"#,
        )),
        ApiFault::Status {
            status,
            retry_after,
        } => {
            let status = fault_status(status);
            let message = "The service returned an injected error (sandbox fault).";
            let response = api_error(graph, status, status_code_name(status), message);
            Some(match retry_after {
                Some(value) => with_retry_after(response, &value),
                None => response,
            })
        }
    }
}

fn unauthorized(graph: bool, failure: &AuthFailure) -> Response {
    let challenge = match failure {
        AuthFailure::Missing => "Bearer",
        _ => "Bearer error=\"invalid_token\"",
    };
    // Graph names every refused token InvalidAuthenticationToken.
    let code = if graph {
        "InvalidAuthenticationToken"
    } else {
        "Unauthorized"
    };
    let mut response = api_error(graph, StatusCode::UNAUTHORIZED, code, &failure.message());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

async fn not_found() -> Response {
    defender_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The requested resource does not exist.",
    )
}

async fn graph_not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The requested resource does not exist.",
    )
}

/// Graph's paths (`/v1.0/...`), whose errors have Graph's shape.
fn is_graph(path: &str) -> bool {
    path == "/v1.0" || path.starts_with("/v1.0/")
}

/// An error in Graph's shape for Graph paths, else in Defender's.
pub(super) fn api_error(graph: bool, status: StatusCode, code: &str, message: &str) -> Response {
    if graph {
        graph_error(status, code, message)
    } else {
        defender_error(status, code, message)
    }
}

/// `{"error":{"code":..,"message":..,"innerError":{"date":..,"request-id":..,
/// "client-request-id":..}}}`, the Microsoft Graph error shape
/// (<https://learn.microsoft.com/graph/errors>).
pub(super) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let inner = json!({"date": iso8601(unix_now()), "request-id": request_id, "client-request-id": request_id});
    let body = json!({"error": {"code": code, "message": message, "innerError": inner}});
    let content_type = [(header::CONTENT_TYPE, "application/json")];
    (status, content_type, body.to_string()).into_response()
}

/// `{"error":{"code":..,"message":..,"target":<request id>}}`, the Defender error shape.
pub(super) fn defender_error(status: StatusCode, code: &str, message: &str) -> Response {
    let target = uuid::Uuid::new_v4().to_string();
    let body = json!({"error": {"code": code, "message": message, "target": target}});
    let content_type = [(header::CONTENT_TYPE, "application/json; charset=utf-8")];
    (status, content_type, body.to_string()).into_response()
}

/// Adds `Retry-After: value` when it is a valid header value.
pub(super) fn with_retry_after(mut response: Response, value: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The error code Defender uses for a status.
pub(super) fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "ResourceNotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::testkit::{XDR, get, get_json, http, start, token};
    use super::super::{ApiFault, SandboxOptions, TENANT_A, TENANT_B};

    async fn error_code(resp: reqwest::Response) -> String {
        let body: Value = resp.json().await.expect("json");
        assert!(body["error"]["target"].is_string(), "{body}");
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn requests_without_a_sandbox_token_are_unauthorized() {
        let sb = start(SandboxOptions::default()).await;
        let resp = http()
            .get(format!("{}/api/incidents", sb.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_code(resp).await, "Unauthorized");
        let resp = get(&sb, "eyJhbGciOiJub25lIn0.e30.x", "/v1.0/security/incidents").await;
        assert_eq!(resp.status().as_u16(), 401);
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap_or_default()
                .starts_with("Bearer")
        );
        assert_eq!(sb.api_requests(), 2);
    }

    #[tokio::test]
    async fn revoked_tokens_get_401_and_new_ones_work() {
        let sb = start(SandboxOptions::default()).await;
        let old = token(&sb, TENANT_A, XDR).await;
        get_json(&sb, &old, "/api/incidents?$top=1", 200).await;
        sb.revoke_tokens();
        assert_eq!(
            get(&sb, &old, "/api/incidents").await.status().as_u16(),
            401
        );
        let new = token(&sb, TENANT_A, XDR).await;
        get_json(&sb, &new, "/api/incidents?$top=1", 200).await;
    }

    #[tokio::test]
    async fn expired_tokens_get_401() {
        let sb = start(SandboxOptions::default()).await;
        sb.set_token_lifetime_secs(0);
        let expired = token(&sb, TENANT_A, XDR).await;
        let resp = get(&sb, &expired, "/api/machines").await;
        assert_eq!(resp.status().as_u16(), 401);
        let body: Value = resp.json().await.expect("json");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("expired")
        );
    }

    #[tokio::test]
    async fn audience_must_be_one_the_api_accepts() {
        let opts = SandboxOptions {
            audiences: vec![XDR.to_owned()],
            ..Default::default()
        };
        let sb = start(opts).await;
        let graph = token(&sb, TENANT_A, "https://graph.microsoft.com").await;
        assert_eq!(
            get(&sb, &graph, "/api/incidents").await.status().as_u16(),
            401
        );
        let slash = token(&sb, TENANT_A, &format!("{XDR}/")).await;
        get_json(&sb, &slash, "/api/incidents?$top=1", 200).await;
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_retry_after() {
        let opts = SandboxOptions {
            incidents_per_minute: 2,
            ..Default::default()
        };
        let sb = start(opts).await;
        let a = token(&sb, TENANT_A, XDR).await;
        for _ in 0..2 {
            get_json(&sb, &a, "/api/incidents?$top=1", 200).await;
        }
        let resp = get(&sb, &a, "/api/incidents?$top=1").await;
        assert_eq!(resp.status().as_u16(), 429);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("integer");
        assert!((1..=60).contains(&retry), "{retry}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "TooManyRequests");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            message,
            format!("Rate limit is exceeded. Try again in {retry} seconds.")
        );
        get_json(&sb, &a, "/api/machines?$top=1", 200).await;
        let b = token(&sb, TENANT_B, XDR).await;
        get_json(&sb, &b, "/api/incidents?$top=1", 200).await;
    }

    #[tokio::test]
    async fn rate_limits_can_be_switched_off() {
        let opts = SandboxOptions {
            incidents_per_minute: 1,
            rate_limits: false,
            ..Default::default()
        };
        let sb = start(opts).await;
        let a = token(&sb, TENANT_A, XDR).await;
        for _ in 0..3 {
            get_json(&sb, &a, "/api/incidents?$top=1", 200).await;
        }
    }

    #[tokio::test]
    async fn status_fault_precedes_auth_and_clears_after_times() {
        let sb = start(SandboxOptions::default()).await;
        sb.set_api_fault_times(
            ApiFault::Status {
                status: 503,
                retry_after: Some("2.5".into()),
            },
            2,
        );
        for _ in 0..2 {
            let resp = get(&sb, "not-a-token", "/api/incidents").await;
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(resp.headers()["retry-after"], "2.5");
            assert_eq!(error_code(resp).await, "ServiceUnavailable");
        }
        assert_eq!(
            get(&sb, "not-a-token", "/api/incidents")
                .await
                .status()
                .as_u16(),
            401
        );
        assert_eq!(sb.api_requests(), 3);
    }

    #[tokio::test]
    async fn reset_mid_body_sends_a_head_then_breaks() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        sb.set_api_fault_times(ApiFault::ResetMidBody, 1);
        let resp = get(&sb, &a, "/api/incidents").await;
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.bytes().await.is_err());
        get_json(&sb, &a, "/api/incidents?$top=1", 200).await;
    }

    #[tokio::test]
    async fn stall_fault_delays_the_answer() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        sb.set_api_fault_times(ApiFault::Stall { millis: 200 }, 1);
        let started = std::time::Instant::now();
        get_json(&sb, &a, "/api/machines?$top=1", 200).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    }

    #[tokio::test]
    async fn last_request_is_recorded_and_unknown_paths_are_404() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let resp = http()
            .get(format!("{}/api/nothing/here?x=1", sb.url()))
            .bearer_auth(&a)
            .header("x-custom", "yes")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 404);
        assert_eq!(error_code(resp).await, "ResourceNotFound");
        let last = sb.last_api_request().expect("recorded");
        assert_eq!(
            (last.method.as_str(), last.path_and_query.as_str()),
            ("GET", "/api/nothing/here?x=1")
        );
        assert_eq!(last.header("X-Custom"), Some("yes"));
        assert_eq!(
            last.header("authorization"),
            Some(format!("Bearer {a}").as_str())
        );
    }
}
