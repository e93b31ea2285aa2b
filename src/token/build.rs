//! Builds a credential source from its `[credentials.NAME]` table: one arm per credential kind,
//! and a fingerprint so that a reload keeps the tokens of unchanged credentials.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::certificate::{AssertionAlg, CertificateFiles};
use super::managed_identity::{Flavour, IMDS_ENDPOINT, Selector};
use super::{
    ClientCertificate, ClientSecret, Credential, CredentialSource, ManagedIdentity, Password,
    TokenEndpoint, WorkloadIdentity,
};
use crate::config::{ConfigError, CredentialConfig, CredentialType, read_secret};
use crate::secret::Secret;

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
        CredentialType::WorkloadIdentity => Credential::WorkloadIdentity(WorkloadIdentity {
            client_id: c.client_id.clone().unwrap_or_default(),
            token_file: c.token_file.clone().unwrap_or_default(),
            endpoint,
        }),
        CredentialType::Password => build_password(name, c, endpoint)?,
        CredentialType::ClientCertificate => build_certificate(name, c, endpoint)?,
        CredentialType::DeviceCode => Credential::DeviceCode(super::device_code::DeviceCode::new(
            name,
            c.client_id.clone().unwrap_or_default(),
            c.token_store.clone().unwrap_or_default(),
            endpoint,
        )),
        CredentialType::ManagedIdentity => Credential::ManagedIdentity(build_managed_identity(c)),
    };
    let id = fingerprint(name, c, authority, &credential);
    Ok(CredentialSource::new(name, id, credential))
}

fn build_certificate(
    name: &str,
    c: &CredentialConfig,
    endpoint: TokenEndpoint,
) -> Result<Credential, ConfigError> {
    let path = format!("credentials.{name}");
    let password = read_secret(
        &c.certificate_password,
        &c.certificate_password_file,
        &format!("{path}.certificate_password"),
    )?;
    let files = CertificateFiles {
        certificate: c.certificate.clone().unwrap_or_default(),
        private_key: c.private_key.clone(),
        password,
    };
    let alg = match c.assertion_alg.as_deref() {
        Some("RS256") => AssertionAlg::Rs256,
        _ => AssertionAlg::Ps256,
    };
    let client_id = c.client_id.clone().unwrap_or_default();
    ClientCertificate::new(
        client_id,
        files,
        alg,
        c.send_certificate_chain.unwrap_or(false),
        endpoint,
    )
    .map(Credential::ClientCertificate)
    .map_err(|e| ConfigError::new(format!("{path}.certificate"), e))
}

/// App Service / Container Apps when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (as
/// azure-identity decides), else IMDS; `endpoint` overrides the URL of either.
fn build_managed_identity(c: &CredentialConfig) -> ManagedIdentity {
    let app_service = std::env::var("IDENTITY_ENDPOINT")
        .ok()
        .zip(std::env::var("IDENTITY_HEADER").ok());
    let (url, flavour) = match app_service {
        Some((url, header)) => (
            url,
            Flavour::AppService {
                header: Secret::new(header),
            },
        ),
        None => (IMDS_ENDPOINT.to_string(), Flavour::Imds),
    };
    let selector = match (&c.client_id, &c.object_id, &c.resource_id) {
        (Some(id), _, _) => Selector::ClientId(id.clone()),
        (_, Some(id), _) => Selector::ObjectId(id.clone()),
        (_, _, Some(id)) => Selector::ResourceId(id.clone()),
        _ => Selector::System,
    };
    ManagedIdentity {
        endpoint: c.endpoint.clone().unwrap_or(url),
        flavour,
        selector,
    }
}

fn build_password(
    name: &str,
    c: &CredentialConfig,
    endpoint: TokenEndpoint,
) -> Result<Credential, ConfigError> {
    let path = format!("credentials.{name}");
    let password = read_secret(&c.password, &c.password_file, &format!("{path}.password"))?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::new(format!("{path}.password"), "is empty"))?;
    let client_secret = read_secret(
        &c.client_secret,
        &c.client_secret_file,
        &format!("{path}.client_secret"),
    )?;
    tracing::warn!(
        credential = name,
        "credential type \"password\" (ROPC) fails for users with multi-factor authentication and \
         Microsoft recommends against it; prefer client_secret, client_certificate or device_code"
    );
    Ok(Credential::Password(Password {
        client_id: c.client_id.clone().unwrap_or_default(),
        client_secret,
        username: c.username.clone().unwrap_or_default(),
        password,
        endpoint,
    }))
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
        Credential::WorkloadIdentity(wi) => wi.token_file.hash(&mut h),
        Credential::DeviceCode(dc) => dc.store.hash(&mut h),
        Credential::ClientCertificate(cc) => (
            &cc.files.certificate,
            &cc.files.private_key,
            &c.assertion_alg,
            c.send_certificate_chain,
        )
            .hash(&mut h),
        Credential::ManagedIdentity(mi) => {
            (&mi.endpoint, &c.object_id, &c.resource_id).hash(&mut h)
        }
        Credential::Password(p) => (
            &p.username,
            p.password.expose(),
            p.client_secret.as_ref().map(|s| s.expose()),
        )
            .hash(&mut h),
        #[cfg(test)]
        Credential::Test(_) => {}
    }
    h.finish()
}
