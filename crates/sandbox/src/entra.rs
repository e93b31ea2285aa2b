//! The Entra ID token endpoint: v2 and v1 flavours, injected faults, dispatch by grant type.
//!
//! Each grant lives in its own file and returns a [`Grant`]; this file turns it into a token
//! and renders the answer the way the endpoint's version does (v1 prints numbers as strings).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State as AxState};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::json;

use super::entra_error::EntraError;
use super::faults::{TokenFault, aborted_response, fault_status};
use super::state::State;
use super::tokens::{Grant, Minted};
use super::{client_credentials, password};

/// Which token endpoint was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    /// `/oauth2/token`, `resource=`, numbers as strings.
    V1,
    /// `/oauth2/v2.0/token`, `scope={resource}/.default`, numbers as numbers.
    V2,
}

type FormResult = Result<Form<Vec<(String, String)>>, FormRejection>;

/// The form parameters of a token request; empty values count as absent, as in Entra.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, EntraError> {
        self.get(name)
            .ok_or_else(|| EntraError::missing_param(name))
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) async fn token_v2(
    AxState(st): AxState<Arc<State>>,
    Path(tenant): Path<String>,
    form: FormResult,
) -> Response {
    handle(&st, &tenant, form, Version::V2).await
}

/// `POST /{tenant}/oauth2/token`.
pub(super) async fn token_v1(
    AxState(st): AxState<Arc<State>>,
    Path(tenant): Path<String>,
    form: FormResult,
) -> Response {
    handle(&st, &tenant, form, Version::V1).await
}

async fn handle(st: &State, tenant: &str, form: FormResult, version: Version) -> Response {
    st.token_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(fault) = st.token_fault.take() {
        if let Some(response) = fault_response(fault).await {
            return response;
        }
    }
    let params = Params(form.map(|Form(pairs)| pairs).unwrap_or_default());
    match issue(st, tenant, &params, version) {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(?err, tenant, "sandbox token request refused");
            err.into_response()
        }
    }
}

/// Validates the request for its grant type and mints a token.
fn issue(
    st: &State,
    tenant: &str,
    params: &Params,
    version: Version,
) -> Result<Response, EntraError> {
    check_tenant(st, tenant)?;
    let interval = st.opts.device_code_interval_secs;
    let (grant, refresh) = match params.required("grant_type")? {
        "client_credentials" => (
            client_credentials::grant(st, tenant, params, version)?,
            None,
        ),
        "password" => (password::grant(st, tenant, params, version)?, None),
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let (g, r) = st.user_flows.poll(params, interval)?;
            (g, Some(r))
        }
        "refresh_token" => {
            let (g, r) = st.user_flows.refresh(tenant, params)?;
            (g, Some(r))
        }
        other => return Err(EntraError::unsupported_grant(other)),
    };
    let minted = st.tokens.issue(grant.clone());
    Ok(answer_with(
        st,
        &grant,
        &minted,
        version,
        refresh.as_deref(),
    ))
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: starts a device sign-in.
pub(super) async fn devicecode(
    AxState(st): AxState<Arc<State>>,
    Path(tenant): Path<String>,
    form: FormResult,
) -> Response {
    let params = Params(form.map(|Form(pairs)| pairs).unwrap_or_default());
    match st
        .user_flows
        .start(&tenant, &params, st.opts.device_code_interval_secs)
    {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Any GUID is an existing tenant; so are the multi-tenant aliases and names clients list.
fn check_tenant(st: &State, tenant: &str) -> Result<(), EntraError> {
    let listed = st.opts.clients.iter().flat_map(|c| &c.tenants);
    let listed = listed.clone().any(|t| t.eq_ignore_ascii_case(tenant));
    if is_guid(tenant) || is_authority_alias(tenant) || listed {
        Ok(())
    } else {
        Err(EntraError::tenant_not_found(tenant))
    }
}

/// `common`, `organizations`, `consumers`: authorities that name no single tenant.
pub(super) fn is_authority_alias(tenant: &str) -> bool {
    ["common", "organizations", "consumers"]
        .iter()
        .any(|alias| alias.eq_ignore_ascii_case(tenant))
}

/// A GUID in its hyphenated 8-4-4-4-12 form.
pub(super) fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// `expires_in` as Entra prints it: one second less than the lifetime (3600 → 3599).
fn advertised_expires_in(lifetime_secs: u64) -> u64 {
    if lifetime_secs > 1 {
        lifetime_secs - 1
    } else {
        lifetime_secs
    }
}

pub(super) fn answer(st: &State, grant: &Grant, minted: &Minted, version: Version) -> Response {
    answer_with(st, grant, minted, version, None)
}

fn answer_with(
    st: &State,
    grant: &Grant,
    minted: &Minted,
    version: Version,
    refresh: Option<&str>,
) -> Response {
    let expires_in = advertised_expires_in(minted.lifetime_secs);
    let body = match version {
        Version::V2 => {
            let mut body = json!({
                "token_type": "Bearer", "expires_in": expires_in,
                "ext_expires_in": expires_in, "access_token": minted.access_token,
            });
            if let Some(refresh_in) = st.opts.refresh_in_secs {
                body["refresh_in"] = json!(refresh_in);
            }
            body
        }
        Version::V1 => json!({
            "token_type": "Bearer",
            "expires_in": expires_in.to_string(),
            "ext_expires_in": expires_in.to_string(),
            "expires_on": minted.issued_at.saturating_add(minted.lifetime_secs).to_string(),
            "not_before": minted.issued_at.to_string(),
            "resource": grant.audience,
            "access_token": minted.access_token,
        }),
    };
    let mut body = body;
    if let Some(rt) = refresh {
        body["refresh_token"] = json!(rt);
        body["scope"] = json!(format!("{}/.default offline_access", grant.audience));
    }
    let headers = [
        (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store, no-cache"),
        (header::PRAGMA, "no-cache"),
    ];
    (headers, body.to_string()).into_response()
}

/// The answer a fault replaces the normal one with; `None` = carry on normally.
pub(super) async fn fault_response(fault: TokenFault) -> Option<Response> {
    let json = [(header::CONTENT_TYPE, "application/json; charset=utf-8")];
    let response = match fault {
        TokenFault::Delay { millis } => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            return None;
        }
        TokenFault::Status {
            status,
            retry_after_secs,
            error,
            aadsts,
        } => EntraError::injected(fault_status(status), error, aadsts)
            .with_retry_after(retry_after_secs)
            .into_response(),
        TokenFault::Garbage => {
            let page =
                "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>";
            ([(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        TokenFault::EmptyOk => (StatusCode::OK, json, "").into_response(),
        TokenFault::Reset => aborted_response(br#"{"token_type":"Bearer","expires_in":35"#),
        TokenFault::NoAccessToken => (
            json,
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599}"#,
        )
            .into_response(),
    };
    Some(response)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::testkit::{XDR, http, post_token, start, v2_form};
    use super::super::{
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxClient, SandboxOptions, TENANT_A,
        TokenFault,
    };

    const V2: &str = "/11111111-1111-1111-1111-111111111111/oauth2/v2.0/token";
    const V1: &str = "/11111111-1111-1111-1111-111111111111/oauth2/token";
    const OTHER_APP: &str = "99999999-0000-0000-0000-000000000000";

    type TokenForm = Vec<(&'static str, String)>;
    /// Path, form, status, `error`, AADSTS code.
    type Case = (&'static str, TokenForm, u16, &'static str, u64);

    fn form_with(changes: &[(&'static str, Option<&str>)]) -> TokenForm {
        let mut form = v2_form(XDR);
        for (key, value) in changes {
            form.retain(|(k, _)| k != key);
            if let Some(value) = value {
                form.push((key, (*value).to_owned()));
            }
        }
        form
    }

    async fn post(
        sb: &super::super::Sandbox,
        path: &str,
        form: &[(&'static str, String)],
    ) -> (u16, Value) {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post_token(sb, path, &form).await
    }

    fn assert_entra_error(got: &(u16, Value), status: u16, error: &str, code: u64) {
        let (got_status, body) = got;
        assert_eq!(*got_status, status, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert_eq!(body["error_codes"][0], code, "{body}");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{description}"
        );
        assert!(description.contains("Trace ID: ") && description.contains("Correlation ID: "));
        assert_eq!(
            body["error_uri"],
            format!("https://login.microsoftonline.com/error?code={code}")
        );
        assert!(body["trace_id"].is_string() && body["timestamp"].is_string());
    }

    #[tokio::test]
    async fn v2_answer_has_numbers_and_optional_refresh_in() {
        let sb = start(SandboxOptions {
            refresh_in_secs: Some(1800),
            ..Default::default()
        })
        .await;
        let (status, body) = post(&sb, V2, &v2_form(XDR)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3599);
        assert_eq!(body["ext_expires_in"], 3599);
        assert_eq!(body["refresh_in"], 1800);
        let token = body["access_token"].as_str().expect("token");
        assert_eq!(token.split('.').count(), 3, "JWT-looking");
        assert!(token.starts_with("eyJ"));
        let sb = start(SandboxOptions::default()).await;
        let (_, body) = post(&sb, V2, &v2_form(XDR)).await;
        assert!(body.get("refresh_in").is_none());
    }

    #[tokio::test]
    async fn v1_answer_has_strings_and_resource() {
        let sb = start(SandboxOptions::default()).await;
        let form = form_with(&[("scope", None), ("resource", Some(XDR))]);
        let (status, body) = post(&sb, V1, &form).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expires_in"], "3599");
        assert_eq!(body["ext_expires_in"], "3599");
        assert_eq!(body["resource"], XDR);
        let expires_on: u64 = body["expires_on"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("expires_on");
        let not_before: u64 = body["not_before"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("not_before");
        assert_eq!(expires_on - not_before, 3600);
        assert!(body["access_token"].is_string());
        assert_eq!(sb.token_requests(), 1);
    }

    #[tokio::test]
    async fn each_refusal_carries_its_aadsts_code() {
        let opts = SandboxOptions {
            clients: vec![SandboxClient {
                client_id: DEFAULT_CLIENT_ID.into(),
                client_secret: DEFAULT_CLIENT_SECRET.into(),
                tenants: vec![TENANT_A.into()],
            }],
            ..Default::default()
        };
        let sb = start(opts).await;
        let not_consented = "/33333333-3333-3333-3333-333333333333/oauth2/v2.0/token";
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (V2, form_with(&[("client_secret", Some("wrong"))]), 401, "invalid_client", 7_000_215),
            (V2, form_with(&[("client_secret", None)]), 401, "invalid_client", 7_000_216),
            (V2, form_with(&[("client_id", Some(OTHER_APP))]), 400, "unauthorized_client", 700_016),
            (not_consented, v2_form(XDR), 400, "unauthorized_client", 700_016),
            ("/contoso.example/oauth2/v2.0/token", v2_form(XDR), 400, "invalid_request", 90_002),
            ("/common/oauth2/v2.0/token", v2_form(XDR), 400, "invalid_request", 50_059),
            ("/organizations/oauth2/token", v2_form(XDR), 400, "invalid_request", 50_059),
            (V2, form_with(&[("scope", Some(XDR))]), 400, "invalid_scope", 70_011),
            (V2, form_with(&[("scope", Some("nonsense/.default"))]), 400, "invalid_resource", 500_011),
            (V2, form_with(&[("scope", None)]), 400, "invalid_request", 900_144),
            (V2, form_with(&[("client_id", None)]), 400, "invalid_request", 900_144),
            (V2, form_with(&[("grant_type", None)]), 400, "invalid_request", 900_144),
            (V2, form_with(&[("grant_type", Some("magic"))]), 400, "unsupported_grant_type", 70_003),
            (V1, v2_form(XDR), 400, "invalid_request", 900_144),
        ];
        for (path, form, status, error, code) in &cases {
            let got = post(&sb, path, form).await;
            assert_entra_error(&got, *status, error, *code);
        }
        assert_eq!(sb.token_requests(), cases.len() as u64);
    }

    #[tokio::test]
    async fn wrong_content_type_is_a_missing_parameter() {
        let sb = start(SandboxOptions::default()).await;
        let resp = http()
            .post(format!("{}{V2}", sb.url()))
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 400);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error_codes"][0], 900_144);
    }

    #[tokio::test]
    async fn status_fault_applies_times_then_clears() {
        let sb = start(SandboxOptions::default()).await;
        let fault = TokenFault::Status {
            status: 503,
            retry_after_secs: Some(7),
            error: None,
            aadsts: Some(50196),
        };
        sb.set_token_fault_times(fault, 2);
        for _ in 0..2 {
            let resp = http()
                .post(format!("{}{V2}", sb.url()))
                .form(&v2_form(XDR))
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(resp.headers()["retry-after"], "7");
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body["error"], "temporarily_unavailable");
            assert_eq!(body["error_codes"][0], 50196);
        }
        let (status, _) = post(&sb, V2, &v2_form(XDR)).await;
        assert_eq!(status, 200);
        assert_eq!(sb.token_requests(), 3);
    }

    #[tokio::test]
    async fn malformed_success_faults_look_like_success() {
        let sb = start(SandboxOptions::default()).await;
        let url = format!("{}{V2}", sb.url());
        sb.set_token_fault(Some(TokenFault::Garbage));
        let resp = http()
            .post(&url)
            .form(&v2_form(XDR))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(serde_json::from_str::<Value>(&resp.text().await.expect("text")).is_err());
        sb.set_token_fault(Some(TokenFault::EmptyOk));
        let resp = http()
            .post(&url)
            .form(&v2_form(XDR))
            .send()
            .await
            .expect("send");
        assert_eq!(
            (resp.status().as_u16(), resp.text().await.expect("text")),
            (200, String::new())
        );
        sb.set_token_fault(Some(TokenFault::NoAccessToken));
        let (status, body) = post(&sb, V2, &v2_form(XDR)).await;
        assert_eq!(status, 200);
        assert!(body.get("access_token").is_none());
        sb.set_token_fault(Some(TokenFault::Reset));
        let resp = http().post(&url).form(&v2_form(XDR)).send().await;
        let broken = match resp {
            Err(_) => true,
            Ok(resp) => resp.bytes().await.is_err(),
        };
        assert!(broken, "the body must break off");
        sb.set_token_fault(None);
        assert_eq!(post(&sb, V2, &v2_form(XDR)).await.0, 200);
    }

    #[tokio::test]
    async fn delay_fault_delays_then_answers_normally() {
        let sb = start(SandboxOptions::default()).await;
        sb.set_token_fault_times(TokenFault::Delay { millis: 200 }, 1);
        let started = std::time::Instant::now();
        assert_eq!(post(&sb, V2, &v2_form(XDR)).await.0, 200);
        assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    }
}
