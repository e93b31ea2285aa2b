//! User sign-in: the device code flow (`/devicecode`, then polling with
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code`) and refresh tokens that rotate
//! on every use and are refused when used twice. Tests approve or decline a pending sign-in
//! through [`super::Sandbox::approve_device_code`] or `POST /_sandbox/device`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::entra::Params;
use super::entra_error::EntraError;
use super::state::lock;
use super::tokens::{Grant, normalize_audience};

/// What became of a device code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Waiting for the user.
    Pending,
    /// The user signed in.
    Approved,
    /// The user said no.
    Declined,
}

struct Pending {
    user_code: String,
    grant: Grant,
    status: DeviceStatus,
    expires: Instant,
    last_poll: Option<Instant>,
}

/// Device codes and refresh tokens in flight.
#[derive(Default)]
pub(super) struct UserFlows {
    /// device_code → sign-in.
    devices: Mutex<HashMap<String, Pending>>,
    /// refresh token → (grant, used already).
    refresh: Mutex<HashMap<String, (Grant, bool)>>,
}

fn random_token(prefix: &str) -> String {
    format!("{prefix}{:032x}", fastrand::u128(..))
}

impl UserFlows {
    /// `POST /{tenant}/oauth2/v2.0/devicecode`.
    pub fn start(&self, tenant: &str, params: &Params, interval: u64) -> Result<Value, EntraError> {
        let client_id = params.required("client_id")?;
        let scope = params.required("scope")?;
        let resource = scope
            .split_whitespace()
            .find_map(|s| s.strip_suffix("/.default"))
            .ok_or_else(|| EntraError::invalid_scope(scope))?;
        let device_code = random_token("DC");
        let user_code = format!("{:04X}-{:04X}", fastrand::u16(..), fastrand::u16(..));
        let grant = Grant {
            tenant: tenant.to_ascii_lowercase(),
            client_id: client_id.to_owned(),
            audience: normalize_audience(resource).to_owned(),
        };
        let expires = Instant::now() + Duration::from_secs(900);
        let pending = Pending {
            user_code: user_code.clone(),
            grant,
            status: DeviceStatus::Pending,
            expires,
            last_poll: None,
        };
        lock(&self.devices).insert(device_code.clone(), pending);
        Ok(json!({
            "device_code": device_code, "user_code": user_code,
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": 900, "interval": interval,
            "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {user_code} to authenticate."),
        }))
    }

    /// Sets the outcome of the sign-in with `user_code`; false when there is none.
    pub fn decide(&self, user_code: &str, status: DeviceStatus) -> bool {
        let mut devices = lock(&self.devices);
        match devices
            .values_mut()
            .find(|p| p.user_code.eq_ignore_ascii_case(user_code))
        {
            Some(p) => {
                p.status = status;
                true
            }
            None => false,
        }
    }

    /// The device-code grant: pending, too fast, declined, expired, or a token and a refresh token.
    pub fn poll(&self, params: &Params, interval: u64) -> Result<(Grant, String), EntraError> {
        let code = params.required("device_code")?;
        let mut devices = lock(&self.devices);
        let pending = devices.get_mut(code).ok_or_else(|| {
            EntraError::user_flow("invalid_grant", 70_000, "The device code is unknown.")
        })?;
        let now = Instant::now();
        if now > pending.expires {
            return Err(EntraError::user_flow(
                "expired_token",
                70_019,
                "Verification code expired.",
            ));
        }
        let too_fast = pending.last_poll.is_some_and(|t| {
            now - t < Duration::from_secs(interval).saturating_sub(Duration::from_millis(100))
        });
        pending.last_poll = Some(now);
        match pending.status {
            _ if too_fast => Err(EntraError::user_flow(
                "slow_down",
                70_016,
                "Polling too fast; slow down.",
            )),
            DeviceStatus::Pending => Err(EntraError::user_flow(
                "authorization_pending",
                70_016,
                "The user has not yet signed in.",
            )),
            DeviceStatus::Declined => Err(EntraError::user_flow(
                "authorization_declined",
                70_000,
                "The user declined the sign-in.",
            )),
            DeviceStatus::Approved => {
                let grant = pending.grant.clone();
                devices.remove(code);
                Ok((grant.clone(), self.mint_refresh(grant)))
            }
        }
    }

    /// The refresh-token grant: the token is spent and a new one returned with the access token.
    pub fn refresh(&self, tenant: &str, params: &Params) -> Result<(Grant, String), EntraError> {
        let presented = params.required("refresh_token")?;
        let scope = params.required("scope")?;
        let resource = scope
            .split_whitespace()
            .find_map(|s| s.strip_suffix("/.default"))
            .ok_or_else(|| EntraError::invalid_scope(scope))?;
        let mut refresh = lock(&self.refresh);
        let dead = || {
            EntraError::user_flow(
                "invalid_grant",
                70_008,
                "The refresh token has expired, was revoked or was already used.",
            )
        };
        let (grant, used) = refresh.get_mut(presented).ok_or_else(dead)?;
        if *used || !grant.tenant.eq_ignore_ascii_case(tenant) {
            return Err(dead());
        }
        *used = true;
        let grant = Grant {
            audience: normalize_audience(resource).to_owned(),
            ..grant.clone()
        };
        drop(refresh);
        Ok((grant.clone(), self.mint_refresh(grant)))
    }

    fn mint_refresh(&self, grant: Grant) -> String {
        let token = random_token("RT");
        lock(&self.refresh).insert(token.clone(), (grant, false));
        token
    }

    /// Every refresh token stops working.
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.refresh).clear();
    }
}
