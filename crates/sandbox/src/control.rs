//! `/_sandbox/*`: the Rust controls over HTTP, so a separate process (the demo, a test driving
//! the real binary) can read statistics and inject faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api::defender_error;
use super::faults::{ApiFault, FaultRequest, TokenFault};
use super::state::State;

pub(super) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/_sandbox/stats", get(stats))
        .route("/_sandbox/last-api-request", get(last_api_request))
        .route("/_sandbox/token-fault", post(token_fault))
        .route("/_sandbox/api-fault", post(api_fault))
        .route("/_sandbox/revoke", post(revoke))
        .route("/_sandbox/token-lifetime", post(token_lifetime))
        .route("/_sandbox/device", post(device))
}

/// `{"token_requests": N, "api_requests": M, "rejected_tokens": {"expired": E, ...}}`: the
/// bearer tokens the API refused by reason (missing, unknown, expired, revoked, wrong_audience,
/// wrong_tenant).
async fn stats(AxState(st): AxState<Arc<State>>) -> Response {
    let token_requests = st.token_requests.load(Ordering::Relaxed);
    let api_requests = st.api_requests.load(Ordering::Relaxed);
    let rejected_tokens = st.rejections.snapshot();
    let body = json!({"token_requests": token_requests, "api_requests": api_requests,
        "rejected_tokens": rejected_tokens});
    Json(body).into_response()
}

/// The last recorded API request, or `null`.
async fn last_api_request(AxState(st): AxState<Arc<State>>) -> Response {
    Json(st.last_request()).into_response()
}

/// Body: a [`TokenFault`] with an optional `times`, or `null` (or nothing) to clear.
async fn token_fault(AxState(st): AxState<Arc<State>>, body: Bytes) -> Response {
    match parse_fault::<TokenFault>(&body) {
        Ok(Some(req)) => st.token_fault.set(Some(req.fault), req.times),
        Ok(None) => st.token_fault.set(None, None),
        Err(message) => return bad_request(&message),
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Body: an [`ApiFault`] with an optional `times`, or `null` (or nothing) to clear.
async fn api_fault(AxState(st): AxState<Arc<State>>, body: Bytes) -> Response {
    match parse_fault::<ApiFault>(&body) {
        Ok(Some(req)) => st.api_fault.set(Some(req.fault), req.times),
        Ok(None) => st.api_fault.set(None, None),
        Err(message) => return bad_request(&message),
    }
    StatusCode::NO_CONTENT.into_response()
}

fn parse_fault<F: DeserializeOwned>(body: &[u8]) -> Result<Option<FaultRequest<F>>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map_err(|e| format!("Invalid fault: {e}"))
}

async fn revoke(AxState(st): AxState<Arc<State>>) -> Response {
    st.tokens.revoke_all();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Lifetime {
    secs: u64,
}

/// Body: `{"secs": N}`, the lifetime of tokens issued from now on.
async fn token_lifetime(AxState(st): AxState<Arc<State>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Lifetime>(&body) {
        Ok(Lifetime { secs }) => {
            st.tokens.set_lifetime_secs(secs);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_request(&format!("Expected {{\"secs\": N}}: {e}")),
    }
}

#[derive(Deserialize)]
struct Decision {
    user_code: String,
    approve: bool,
}

/// Body: `{"user_code": "ABCD-1234", "approve": true}`: the user signs in (or declines).
async fn device(AxState(st): AxState<Arc<State>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Decision>(&body) {
        Ok(d) => {
            let status = if d.approve {
                super::DeviceStatus::Approved
            } else {
                super::DeviceStatus::Declined
            };
            if st.user_flows.decide(&d.user_code, status) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                defender_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "No pending sign-in has this user code.",
                )
            }
        }
        Err(e) => bad_request(&format!(
            "Expected {{\"user_code\": \"...\", \"approve\": true}}: {e}"
        )),
    }
}

fn bad_request(message: &str) -> Response {
    defender_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::testkit::{XDR, get, http, post_token, start, token, v2_form};
    use super::super::{SandboxOptions, TENANT_A, TENANT_B};

    async fn post(url: String, body: Value) -> u16 {
        http()
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn http_controls_drive_faults_revocation_and_lifetime() {
        let sb = start(SandboxOptions::default()).await;
        let base = sb.url();
        let fault = json!({"kind": "status", "status": 500, "times": 1});
        assert_eq!(
            post(format!("{base}/_sandbox/token-fault"), fault).await,
            204
        );
        let form = v2_form(XDR);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path = format!("/{TENANT_A}/oauth2/v2.0/token");
        assert_eq!(post_token(&sb, &path, &form).await.0, 500);
        assert_eq!(
            post(
                format!("{base}/_sandbox/token-lifetime"),
                json!({"secs": 120})
            )
            .await,
            204
        );
        let (status, body) = post_token(&sb, &path, &form).await;
        assert_eq!((status, body["expires_in"].as_u64()), (200, Some(119)));

        let a = token(&sb, TENANT_A, XDR).await;
        assert_eq!(
            post(
                format!("{base}/_sandbox/api-fault"),
                json!({"kind": "status", "status": 502})
            )
            .await,
            204
        );
        assert_eq!(get(&sb, &a, "/api/machines").await.status().as_u16(), 502);
        assert_eq!(
            post(format!("{base}/_sandbox/api-fault"), Value::Null).await,
            204
        );
        assert_eq!(get(&sb, &a, "/api/machines").await.status().as_u16(), 200);
        assert_eq!(
            post(format!("{base}/_sandbox/revoke"), Value::Null).await,
            204
        );
        assert_eq!(get(&sb, &a, "/api/machines").await.status().as_u16(), 401);
        assert_eq!(
            post(
                format!("{base}/_sandbox/api-fault"),
                json!({"kind": "nope"})
            )
            .await,
            400
        );

        let stats: Value = http()
            .get(format!("{base}/_sandbox/stats"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(
            (&stats["token_requests"], &stats["api_requests"]),
            (&json!(3), &json!(3))
        );
        assert_eq!(stats["rejected_tokens"]["revoked"], 1);
        let last: Value = http()
            .get(format!("{base}/_sandbox/last-api-request"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(last["path_and_query"], "/api/machines");
    }

    #[tokio::test]
    async fn stats_count_refused_tokens_by_reason() {
        let sb = start(SandboxOptions::default()).await;
        let url = format!("{}/api/machines", sb.url());
        let send = |token: String, expect: &'static str| {
            http()
                .get(&url)
                .bearer_auth(token)
                .header("x-sandbox-expect-tenant", expect)
                .send()
        };
        let a = token(&sb, TENANT_A, XDR).await;
        let status = |r: reqwest::Result<reqwest::Response>| r.expect("send").status().as_u16();
        assert_eq!(status(send(a.clone(), TENANT_A).await), 200);
        assert_eq!(status(send(a.clone(), TENANT_B).await), 403);
        assert_eq!(status(send("nope".into(), TENANT_A).await), 401);
        sb.set_token_lifetime_secs(0);
        let expired = token(&sb, TENANT_A, XDR).await;
        assert_eq!(status(send(expired.clone(), TENANT_A).await), 401);
        assert_eq!(status(send(expired, TENANT_A).await), 401);
        assert_eq!(status(http().get(&url).send().await), 401);

        let stats: Value = http()
            .get(format!("{}/_sandbox/stats", sb.url()))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let want = json!({"missing": 1, "unknown": 1, "expired": 2, "revoked": 0,
            "wrong_audience": 0, "wrong_tenant": 1});
        assert_eq!(stats["rejected_tokens"], want);
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_connections() {
        let sb = start(SandboxOptions::default()).await;
        sb.shutdown();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let client = super::super::testkit::http();
        assert!(
            client
                .get(format!("{}/_sandbox/stats", sb.url()))
                .send()
                .await
                .is_err()
        );
    }
}
