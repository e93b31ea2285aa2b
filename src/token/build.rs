//! Builds a credential source from its `[credentials.NAME]` table: one arm per credential kind,
//! and a fingerprint so that a reload keeps the tokens of unchanged credentials.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::{ClientSecret, Credential, CredentialSource, TokenEndpoint};
use crate::config::{ConfigError, CredentialConfig, CredentialType, read_secret};

/// Builds the source of credential `name`; `authority` is the cloud's (or overridden) host.
pub fn build_credential(
    name: &str,
    c: &CredentialConfig,
    authority: &str,
) -> Result<CredentialSource, ConfigError> {
    let path = format!("credentials.{name}");
    let endpoint = TokenEndpoint::new(
        authority,
        c.token_version.unwrap_or(2),
        c.token_url.as_deref(),
    );
    let credential = match c.kind {
        CredentialType::ClientSecret => {
            let secret = read_secret(
                &c.client_secret,
                &c.client_secret_file,
                &format!("{path}.client_secret"),
            )?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::new(format!("{path}.client_secret"), "is empty"))?;
            Credential::ClientSecret(ClientSecret {
                client_id: c.client_id.clone().unwrap_or_default(),
                secret,
                endpoint: endpoint.clone(),
            })
        }
        other => {
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!("{:?} is not available", other.as_str()),
            ));
        }
    };
    let id = fingerprint(name, c, authority, &credential);
    Ok(CredentialSource::new(name, id, credential))
}

/// Same configuration → same ID, so a reload keeps the tokens of unchanged credentials.
fn fingerprint(name: &str, c: &CredentialConfig, authority: &str, credential: &Credential) -> u64 {
    let mut h = DefaultHasher::new();
    (
        name,
        c.kind.as_str(),
        &c.tenant_id,
        &c.client_id,
        c.token_version,
        &c.token_url,
        authority,
    )
        .hash(&mut h);
    match credential {
        Credential::ClientSecret(cs) => cs.secret.expose().hash(&mut h),
        #[cfg(test)]
        Credential::Test(_) => {}
    }
    h.finish()
}
