//! The `client_credentials` grant with a client secret or a federated assertion (workload
//! identity): checks app, consent, credential and scope.

use super::SandboxClient;
use super::entra::{Params, Version, is_authority_alias, is_guid};
use super::entra_error::EntraError;
use super::state::State;
use super::tokens::{Grant, normalize_audience};

/// Validates a client-credentials request for `tenant` and says what to mint.
pub(super) fn grant(
    st: &State,
    tenant: &str,
    params: &Params,
    version: Version,
) -> Result<Grant, EntraError> {
    if is_authority_alias(tenant) {
        return Err(EntraError::no_tenant_information());
    }
    let client_id = params.required("client_id")?;
    let audience = requested_audience(params, tenant, version)?;
    let client = consented_client(st, client_id, tenant)?;
    check_client_auth(st, client, params, tenant)?;
    Ok(Grant {
        tenant: tenant.to_ascii_lowercase(),
        client_id: client.client_id.clone(),
        audience: audience.to_owned(),
    })
}

/// The resource named by `scope={resource}/.default` (v2) or `resource=` (v1).
pub(super) fn requested_audience<'a>(
    params: &'a Params,
    tenant: &str,
    version: Version,
) -> Result<&'a str, EntraError> {
    let resource = match version {
        Version::V1 => params.required("resource")?,
        Version::V2 => {
            let scope = params.required("scope")?;
            scope
                .strip_suffix("/.default")
                .filter(|r| !r.is_empty() && !r.contains(char::is_whitespace))
                .ok_or_else(|| EntraError::invalid_scope(scope))?
        }
    };
    let resource = normalize_audience(resource);
    if is_resource_name(resource) {
        Ok(resource)
    } else {
        Err(EntraError::resource_not_found(resource, tenant))
    }
}

/// Entra knows resources by URI or by app ID; anything else cannot name a service principal.
fn is_resource_name(resource: &str) -> bool {
    let uri_body = ["https://", "http://", "api://"]
        .iter()
        .find_map(|scheme| resource.strip_prefix(scheme));
    uri_body.is_some_and(|rest| !rest.is_empty()) || is_guid(resource)
}

/// The registered app `client_id`, provided it is consented in `tenant`.
pub(super) fn consented_client<'a>(
    st: &'a State,
    client_id: &str,
    tenant: &str,
) -> Result<&'a SandboxClient, EntraError> {
    st.opts
        .clients
        .iter()
        .find(|c| c.client_id.eq_ignore_ascii_case(client_id))
        .filter(|c| {
            c.tenants
                .iter()
                .any(|t| t == "*" || t.eq_ignore_ascii_case(tenant))
        })
        .ok_or_else(|| EntraError::app_not_found(client_id, tenant))
}

/// The jwt-bearer client assertion type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A secret, a certificate-signed assertion, or a federated assertion that must be the one
/// registered for the client.
fn check_client_auth(
    st: &State,
    client: &SandboxClient,
    params: &Params,
    tenant: &str,
) -> Result<(), EntraError> {
    let Some(kind) = params.get("client_assertion_type") else {
        return check_secret(client, params);
    };
    if kind != JWT_BEARER {
        return Err(EntraError::bad_assertion_type(kind));
    }
    let assertion = params.required("client_assertion")?;
    if super::assertion::Certificates::is_signed_assertion(assertion) {
        return st.certificates.verify(&client.client_id, assertion, tenant);
    }
    if st.federated_matches(&client.client_id, assertion) {
        Ok(())
    } else {
        Err(EntraError::no_federated_match())
    }
}

pub(super) fn check_secret(client: &SandboxClient, params: &Params) -> Result<(), EntraError> {
    match params.get("client_secret") {
        None => Err(EntraError::missing_client_secret()),
        Some(secret) if secret == client.client_secret => Ok(()),
        Some(_) => Err(EntraError::invalid_client_secret(&client.client_id)),
    }
}
