//! Entra ID error answers: the AADSTS catalogue the sandbox uses and their JSON shape.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::time::{entra_timestamp, unix_now};

/// An OAuth2 error as Entra ID renders it.
#[derive(Debug)]
pub(super) struct EntraError {
    status: StatusCode,
    error: String,
    aadsts: Option<u32>,
    message: String,
    retry_after_secs: Option<u64>,
}

impl EntraError {
    fn new(status: StatusCode, error: &str, aadsts: u32, message: String) -> Self {
        let error = error.to_owned();
        EntraError {
            status,
            error,
            aadsts: Some(aadsts),
            message,
            retry_after_secs: None,
        }
    }

    fn bad_request(error: &str, aadsts: u32, message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, aadsts, message)
    }

    pub fn missing_param(name: &str) -> Self {
        let msg = format!("The request body must contain the following parameter: '{name}'.");
        Self::bad_request("invalid_request", 900_144, msg)
    }

    pub fn tenant_not_found(tenant: &str) -> Self {
        let msg = format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are \
             signing into the correct cloud. Check with your subscription administrator, this may \
             happen if there are no active subscriptions for the tenant."
        );
        Self::bad_request("invalid_request", 90_002, msg)
    }

    pub fn no_tenant_information() -> Self {
        let msg = "No tenant-identifying information found in either the request or implied by \
                   any provided credentials.";
        Self::bad_request("invalid_request", 50_059, msg.to_owned())
    }

    pub fn unsupported_grant(grant: &str) -> Self {
        let msg = format!("The app requested an unsupported grant type '{grant}'.");
        Self::bad_request("unsupported_grant_type", 70_003, msg)
    }

    pub fn app_not_found(client_id: &str, tenant: &str) -> Self {
        let msg = format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'. \
             This can happen if the application has not been installed by the administrator of the \
             tenant or consented to by any user in the tenant. You may have sent your \
             authentication request to the wrong tenant."
        );
        Self::bad_request("unauthorized_client", 700_016, msg)
    }

    pub fn missing_client_secret() -> Self {
        let msg = "'client_assertion', 'client_secret' or 'request' is required for the \
                   'client_credentials' grant type.";
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_216,
            msg.to_owned(),
        )
    }

    pub fn invalid_client_secret(client_id: &str) -> Self {
        let msg = format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        );
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", 7_000_215, msg)
    }

    pub fn no_federated_match() -> Self {
        let msg = "No matching federated identity record found for presented assertion. Assertion \
                   Issuer: 'https://sandbox.invalid/oidc'.";
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            70_021,
            msg.to_owned(),
        )
    }

    pub fn bad_assertion_type(kind: &str) -> Self {
        let msg = format!("The client_assertion_type '{kind}' is not supported.");
        Self::bad_request("invalid_request", 50_027, msg)
    }

    pub fn bad_assertion_signature(client_id: &str) -> Self {
        let msg = format!(
            "Client assertion failed signature validation, or its certificate (x5t) is not registered for app '{client_id}'."
        );
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", 700_027, msg)
    }

    pub fn bad_assertion_audience(aud: &str) -> Self {
        let msg = format!(
            "The audience claim value '{aud}' is invalid, or iss/sub do not name the client."
        );
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", 700_212, msg)
    }

    pub fn assertion_expired() -> Self {
        let msg = "Client assertion is not within its valid time range.";
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_024,
            msg.to_owned(),
        )
    }

    pub fn assertion_replayed() -> Self {
        let msg = "The client assertion was already used (its jti was seen before).";
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_025,
            msg.to_owned(),
        )
    }

    /// An error of the user sign-in flows (`authorization_pending`, `slow_down`, ...).
    pub fn user_flow(error: &str, aadsts: u32, message: &str) -> Self {
        Self::bad_request(error, aadsts, message.to_owned())
    }

    pub fn invalid_user_credentials() -> Self {
        let msg = "Error validating credentials due to invalid username or password.";
        Self::bad_request("invalid_grant", 50_126, msg.to_owned())
    }

    pub fn invalid_scope(scope: &str) -> Self {
        let msg = format!(
            "The provided request must include a 'scope' input parameter. The provided value for \
             the input parameter 'scope' is not valid. The scope {scope} is not valid."
        );
        Self::bad_request("invalid_scope", 70_011, msg)
    }

    pub fn resource_not_found(resource: &str, tenant: &str) -> Self {
        let msg = format!(
            "The resource principal named {resource} was not found in the tenant named {tenant}. \
             This can happen if the application has not been installed by the administrator of the \
             tenant or consented to by any user in the tenant. You might have sent your \
             authentication request to the wrong tenant."
        );
        Self::bad_request("invalid_resource", 500_011, msg)
    }

    /// An injected failure (`TokenFault::Status`).
    pub fn injected(status: StatusCode, error: Option<String>, aadsts: Option<u32>) -> Self {
        let error = error.unwrap_or_else(|| "temporarily_unavailable".to_owned());
        let message = "The service is temporarily unavailable (sandbox fault).".to_owned();
        EntraError {
            status,
            error,
            aadsts,
            message,
            retry_after_secs: None,
        }
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after_secs = secs;
        self
    }

    fn body(&self, trace_id: &str) -> Value {
        let timestamp = entra_timestamp(unix_now());
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let prefix = self
            .aadsts
            .map(|c| format!("AADSTS{c}: "))
            .unwrap_or_default();
        let description = format!(
            "{prefix}{}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            self.message
        );
        let mut body = Map::new();
        body.insert("error".into(), json!(self.error));
        body.insert("error_description".into(), json!(description));
        if let Some(code) = self.aadsts {
            body.insert("error_codes".into(), json!([code]));
        }
        body.insert("timestamp".into(), json!(timestamp));
        body.insert("trace_id".into(), json!(trace_id));
        body.insert("correlation_id".into(), json!(correlation_id));
        if let Some(code) = self.aadsts {
            let uri = format!("https://login.microsoftonline.com/error?code={code}");
            body.insert("error_uri".into(), json!(uri));
        }
        Value::Object(body)
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let body = self.body(&trace_id).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        let json = HeaderValue::from_static("application/json; charset=utf-8");
        headers.insert(header::CONTENT_TYPE, json);
        if let Ok(id) = HeaderValue::from_str(&trace_id) {
            headers.insert("x-ms-request-id", id);
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
