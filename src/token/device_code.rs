//! User context with device-code sign-in (`type = "device_code"`): `defender-proxy login` stores
//! a refresh token in `token_store` (mode 0600, written atomically); the proxy then gets access
//! tokens with the refresh-token grant and stores each rotated refresh token the same way. A dead
//! refresh token (`invalid_grant`, `interaction_required`) means a user must run `login` again.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::entra::FormValue;
use super::{EntraClient, Token, TokenEndpoint, TokenError};
use crate::secret::Secret;

/// What `token_store` holds.
#[derive(Serialize, Deserialize)]
pub struct StoredLogin {
    /// The refresh token.
    pub refresh_token: String,
    /// The app it was issued to.
    pub client_id: String,
    /// The tenant signed in to.
    pub tenant: String,
    /// Unix time of the last write.
    pub saved_at: u64,
}

impl fmt::Debug for StoredLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredLogin")
            .field("refresh_token", &"***")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Reads the store; `None` when nobody has signed in.
pub fn read_store(path: &Path) -> Option<StoredLogin> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes the store atomically (a 0600 temporary file in the same folder, then a rename).
pub fn write_store(path: &Path, login: &StoredLogin) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("store"),
        fastrand::u64(..)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(login).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Unix time now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A signed-in user's refresh token, kept in a file.
#[derive(Debug)]
pub struct DeviceCode {
    /// The credential's name (for the sign-in hint).
    pub name: String,
    /// Application (client) ID.
    pub client_id: String,
    /// The refresh token file.
    pub store: PathBuf,
    /// Where to ask.
    pub endpoint: TokenEndpoint,
    /// One refresh at a time: each one spends the stored refresh token.
    lock: tokio::sync::Mutex<()>,
}

impl DeviceCode {
    /// A source for the user signed in with `login`.
    pub fn new(name: &str, client_id: String, store: PathBuf, endpoint: TokenEndpoint) -> Self {
        DeviceCode {
            name: name.to_owned(),
            client_id,
            store,
            endpoint,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn login_required(&self, aadsts: Option<u32>) -> TokenError {
        TokenError::LoginRequired {
            credential: self.name.clone(),
            aadsts,
        }
    }

    /// One token for `tenant` and `scope`, rotating the stored refresh token.
    pub async fn fetch(
        &self,
        entra: &EntraClient,
        tenant: &str,
        scope: &str,
    ) -> Result<Token, TokenError> {
        let _one_at_a_time = self.lock.lock().await;
        let stored = read_store(&self.store).ok_or_else(|| self.login_required(None))?;
        let refresh = Secret::new(stored.refresh_token);
        let scopes = format!("{scope} offline_access");
        let form = [
            ("grant_type", FormValue::Plain("refresh_token")),
            ("client_id", FormValue::Plain(&self.client_id)),
            ("refresh_token", FormValue::Secret(&refresh)),
            ("scope", FormValue::Plain(&scopes)),
        ];
        let (token, rotated) = match entra
            .request_token_and_refresh(&self.endpoint.url(tenant), &form)
            .await
        {
            Ok(answer) => answer,
            Err(TokenError::Rejected { error, aadsts })
                if matches!(error.as_str(), "invalid_grant" | "interaction_required") =>
            {
                return Err(self.login_required(aadsts));
            }
            Err(e) => return Err(e),
        };
        if let Some(rotated) = rotated {
            let login = StoredLogin {
                refresh_token: rotated.expose().to_owned(),
                client_id: self.client_id.clone(),
                tenant: stored.tenant,
                saved_at: unix_now(),
            };
            if let Err(e) = write_store(&self.store, &login) {
                tracing::error!(credential = %self.name, error = %e, "could not store the rotated refresh token");
            }
        }
        Ok(token)
    }
}
