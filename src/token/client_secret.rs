//! Client credentials with a shared secret (`type = "client_secret"`): application and
//! partner contexts.

use super::entra::FormValue;
use super::{EntraClient, Token, TokenEndpoint, TokenError};
use crate::secret::Secret;

/// An app registration's ID and secret.
#[derive(Debug)]
pub struct ClientSecret {
    /// Application (client) ID.
    pub client_id: String,
    /// The secret.
    pub secret: Secret,
    /// Where to ask.
    pub endpoint: TokenEndpoint,
}

impl ClientSecret {
    /// One token for `tenant` and `scope`.
    pub async fn fetch(
        &self,
        entra: &EntraClient,
        tenant: &str,
        scope: &str,
    ) -> Result<Token, TokenError> {
        let (aud_key, aud) = self.endpoint.audience_param(scope);
        let form = [
            ("grant_type", FormValue::Plain("client_credentials")),
            ("client_id", FormValue::Plain(&self.client_id)),
            ("client_secret", FormValue::Secret(&self.secret)),
            (aud_key, FormValue::Plain(aud)),
        ];
        entra.request_token(&self.endpoint.url(tenant), &form).await
    }
}
