//! Azure managed identity (`type = "managed_identity"`): IMDS on VMs and AKS nodes, or the
//! App Service / Container Apps endpoint when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set.
//! A user-assigned identity is chosen by `client_id`, `object_id` or `resource_id`. Requests
//! never go through an HTTP proxy; 404/410/429/5xx are retried with backoff.

use super::{EntraClient, Token, TokenError};
use crate::secret::Secret;

/// The IMDS token endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// Which endpoint, and how it authenticates the caller.
#[derive(Debug)]
pub enum Flavour {
    /// Instance Metadata Service: `Metadata: true`.
    Imds,
    /// App Service / Container Apps: `X-IDENTITY-HEADER`.
    AppService {
        /// The value of `IDENTITY_HEADER`.
        header: Secret,
    },
}

/// Which identity, when the machine has several.
#[derive(Debug, Clone)]
pub enum Selector {
    /// The system-assigned identity.
    System,
    /// A user-assigned identity by client ID.
    ClientId(String),
    /// By object (principal) ID.
    ObjectId(String),
    /// By Azure resource ID.
    ResourceId(String),
}

/// A managed identity source.
#[derive(Debug)]
pub struct ManagedIdentity {
    /// The endpoint URL.
    pub endpoint: String,
    /// IMDS or App Service.
    pub flavour: Flavour,
    /// Which identity.
    pub selector: Selector,
}

impl ManagedIdentity {
    /// One token for `scope` (the identity's own tenant; `/.default` is dropped for `resource`).
    pub async fn fetch(&self, entra: &EntraClient, scope: &str) -> Result<Token, TokenError> {
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let (api_version, header) = match &self.flavour {
            Flavour::Imds => ("2018-02-01", ("metadata", Secret::new("true"))),
            Flavour::AppService { header } => ("2019-08-01", ("x-identity-header", header.clone())),
        };
        let mut url = format!(
            "{}?api-version={api_version}&resource={}",
            self.endpoint,
            encode(resource)
        );
        let imds = matches!(self.flavour, Flavour::Imds);
        let (key, value) = match &self.selector {
            Selector::System => {
                return entra
                    .get_managed_identity_token(&url, (header.0, &header.1))
                    .await;
            }
            Selector::ClientId(id) => ("client_id", id),
            Selector::ObjectId(id) => (if imds { "object_id" } else { "principal_id" }, id),
            Selector::ResourceId(id) => (if imds { "msi_res_id" } else { "mi_res_id" }, id),
        };
        url.push_str(&format!("&{key}={}", encode(value)));
        entra
            .get_managed_identity_token(&url, (header.0, &header.1))
            .await
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("https://api.security.microsoft.com"),
            "https%3A%2F%2Fapi.security.microsoft.com"
        );
        assert_eq!(encode("/subscriptions/x/rg"), "%2Fsubscriptions%2Fx%2Frg");
    }
}
