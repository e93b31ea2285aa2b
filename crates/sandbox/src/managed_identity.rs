//! Azure managed identity endpoints: IMDS (`GET /metadata/identity/oauth2/token`, header
//! `Metadata: true`, api-version 2018-02-01) and App Service / Container Apps (`GET /msi/token`,
//! header `X-IDENTITY-HEADER`, api-version 2019-08-01). Both answer like the v1 endpoint, with
//! numbers as strings; injected token faults apply to them too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State as AxState};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::entra::{Version, answer, fault_response};
use super::state::State;
use super::tokens::{Grant, normalize_audience};

/// `GET /metadata/identity/oauth2/token` (IMDS).
pub(super) async fn imds(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("metadata").is_none_or(|v| v != "true") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let selector = q
        .get("client_id")
        .or(q.get("object_id"))
        .or(q.get("msi_res_id"));
    token(&st, &q, "2018-02-01", selector).await
}

/// `GET /msi/token` (App Service, Container Apps).
pub(super) async fn app_service(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let secret = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if secret != Some(st.opts.identity_header.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "The X-IDENTITY-HEADER is missing or wrong.",
        );
    }
    let selector = q
        .get("client_id")
        .or(q.get("principal_id"))
        .or(q.get("mi_res_id"));
    token(&st, &q, "2019-08-01", selector).await
}

async fn token(
    st: &State,
    q: &HashMap<String, String>,
    api_version: &str,
    selector: Option<&String>,
) -> Response {
    st.token_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(fault) = st.token_fault.take() {
        if let Some(response) = fault_response(fault).await {
            return response;
        }
    }
    if q.get("api-version").map(String::as_str) != Some(api_version) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing or unsupported api-version.",
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing.",
        );
    };
    let identities = &st.opts.managed_identities;
    let client_id = match selector {
        None => identities.first(),
        Some(id) => identities.iter().find(|i| i.eq_ignore_ascii_case(id)),
    };
    let Some(client_id) = client_id else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        );
    };
    let grant = Grant {
        tenant: st.opts.managed_identity_tenant.to_ascii_lowercase(),
        client_id: client_id.clone(),
        audience: normalize_audience(resource).to_owned(),
    };
    let minted = st.tokens.issue(grant.clone());
    answer(st, &grant, &minted, Version::V1)
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}
