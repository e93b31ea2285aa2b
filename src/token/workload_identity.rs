//! Workload identity federation (`type = "workload_identity"`): the Kubernetes service account
//! token in `token_file` (re-read at every fetch, as Kubernetes rotates it) is sent as a
//! jwt-bearer client assertion. Its content is a secret and is never logged.

use std::path::PathBuf;

use super::entra::FormValue;
use super::{EntraClient, Token, TokenEndpoint, TokenError};
use crate::secret::Secret;

/// The jwt-bearer client assertion type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An app registration trusting a federated identity.
#[derive(Debug)]
pub struct WorkloadIdentity {
    /// Application (client) ID.
    pub client_id: String,
    /// The projected service account token.
    pub token_file: PathBuf,
    /// Where to ask.
    pub endpoint: TokenEndpoint,
}

impl WorkloadIdentity {
    /// One token for `tenant` and `scope`, with the token file as it is now.
    pub async fn fetch(
        &self,
        entra: &EntraClient,
        tenant: &str,
        scope: &str,
    ) -> Result<Token, TokenError> {
        let assertion = read_assertion(&self.token_file).await?;
        let url = self.endpoint.url(tenant);
        request_with_assertion(
            entra,
            &self.endpoint,
            &url,
            &self.client_id,
            &assertion,
            scope,
        )
        .await
    }
}

/// The client-credentials grant with a jwt-bearer client assertion (federated or signed).
pub async fn request_with_assertion(
    entra: &EntraClient,
    endpoint: &TokenEndpoint,
    url: &str,
    client_id: &str,
    assertion: &Secret,
    scope: &str,
) -> Result<Token, TokenError> {
    let (aud_key, aud) = endpoint.audience_param(scope);
    let form = [
        ("grant_type", FormValue::Plain("client_credentials")),
        ("client_id", FormValue::Plain(client_id)),
        ("client_assertion_type", FormValue::Plain(JWT_BEARER)),
        ("client_assertion", FormValue::Secret(assertion)),
        (aud_key, FormValue::Plain(aud)),
    ];
    entra.request_token(url, &form).await
}

async fn read_assertion(path: &PathBuf) -> Result<Secret, TokenError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim())),
        Ok(_) => Err(TokenError::Unavailable {
            reason: format!("the federated token file {} is empty", path.display()),
            retry_after: None,
        }),
        Err(e) => Err(TokenError::Unavailable {
            reason: format!(
                "cannot read the federated token file {}: {e}",
                path.display()
            ),
            retry_after: None,
        }),
    }
}
