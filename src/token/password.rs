//! Resource-owner password credentials (`type = "password"`, ROPC), for parity with Microsoft's
//! older MDE samples. It breaks under MFA and Microsoft recommends against it; the proxy warns.

use super::entra::FormValue;
use super::{EntraClient, Token, TokenEndpoint, TokenError};
use crate::secret::Secret;

/// A user's name and password, for an app registration.
#[derive(Debug)]
pub struct Password {
    /// Application (client) ID.
    pub client_id: String,
    /// Confidential clients also send their secret.
    pub client_secret: Option<Secret>,
    /// The user.
    pub username: String,
    /// The user's password.
    pub password: Secret,
    /// Where to ask.
    pub endpoint: TokenEndpoint,
}

impl Password {
    /// One token for `tenant` and `scope` on the user's behalf.
    pub async fn fetch(
        &self,
        entra: &EntraClient,
        tenant: &str,
        scope: &str,
    ) -> Result<Token, TokenError> {
        let (aud_key, aud) = self.endpoint.audience_param(scope);
        let mut form = vec![
            ("grant_type", FormValue::Plain("password")),
            ("client_id", FormValue::Plain(&self.client_id)),
            ("username", FormValue::Plain(&self.username)),
            ("password", FormValue::Secret(&self.password)),
            (aud_key, FormValue::Plain(aud)),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", FormValue::Secret(secret)));
        }
        entra.request_token(&self.endpoint.url(tenant), &form).await
    }
}
