//! The resource-owner password grant (ROPC, `grant_type=password`), as Microsoft's older MDE
//! samples use it: a registered app consented in the tenant, and a known user and password.

use super::client_credentials::{consented_client, requested_audience};
use super::entra::{Params, Version, is_authority_alias};
use super::entra_error::EntraError;
use super::state::State;
use super::tokens::Grant;

/// Validates a password-grant request for `tenant`.
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
    if params
        .get("client_secret")
        .is_some_and(|s| s != client.client_secret)
    {
        return Err(EntraError::invalid_client_secret(&client.client_id));
    }
    let (user, password) = (params.required("username")?, params.required("password")?);
    let known = st
        .opts
        .users
        .iter()
        .any(|(u, p)| u.eq_ignore_ascii_case(user) && p == password);
    if !known {
        return Err(EntraError::invalid_user_credentials());
    }
    Ok(Grant {
        tenant: tenant.to_ascii_lowercase(),
        client_id: client.client_id.clone(),
        audience: audience.to_owned(),
    })
}
