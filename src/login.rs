//! `defender-proxy login --credential NAME`: the device code sign-in of the user context. Shows
//! Microsoft's message, polls at the interval asked (slower on `slow_down`), and stores the
//! refresh token in the credential's `token_store`.

use std::time::Duration;

use crate::cloud::Cloud;
use crate::config::{Config, ConfigError, CredentialType};
use crate::token::device_code::{StoredLogin, unix_now, write_store};
use crate::token::entra::FormValue;
use crate::token::{EntraClient, TokenEndpoint};

/// Why `login` failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The config or the command line is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sign-in did not complete.
    #[error("{0}")]
    Failed(String),
}

/// The `device_code` credential `name`; else an error that says what `login` is for and which
/// credentials it can sign in.
fn device_code_credential<'a>(
    config: &'a Config,
    name: &str,
) -> Result<&'a crate::config::CredentialConfig, ConfigError> {
    let signable: Vec<&str> = config
        .credentials
        .iter()
        .filter(|(_, c)| c.kind == CredentialType::DeviceCode)
        .map(|(n, _)| n.as_str())
        .collect();
    let which = match signable.as_slice() {
        [] => "this config has none".to_string(),
        names => format!("this config has {}", names.join(", ")),
    };
    match config.credentials.get(name) {
        Some(c) if c.kind == CredentialType::DeviceCode => Ok(c),
        Some(c) => Err(ConfigError::new(
            "--credential",
            format!(
                "credential {name:?} is of type {:?}, which needs no sign-in; login signs a user in \
                 for a device_code credential (user context): {which}",
                c.kind.as_str()
            ),
        )),
        None => Err(ConfigError::new(
            "--credential",
            format!("no credential named {name:?}; login takes a device_code credential: {which}"),
        )),
    }
}

/// Runs the sign-in for `credential`; `show` receives Microsoft's message for the user.
pub async fn login(
    config: &Config,
    credential: &str,
    entra: &EntraClient,
    show: impl Fn(&str),
) -> Result<(), LoginError> {
    let c = device_code_credential(config, credential)?;
    let (tenant, client_id) = (
        c.tenant_id.clone().unwrap_or_default(),
        c.client_id.clone().unwrap_or_default(),
    );
    let store = c.token_store.clone().unwrap_or_default();
    let authority = config.cloud.authority_host.clone().unwrap_or_else(|| {
        Cloud::parse(&config.cloud.name)
            .unwrap_or(Cloud::Public)
            .authority_host()
            .to_string()
    });
    let token_url = TokenEndpoint::new(&authority, 2, c.token_url.as_deref()).url(&tenant);
    let device_url = token_url
        .strip_suffix("/token")
        .map(|u| format!("{u}/devicecode"))
        .unwrap_or_else(|| token_url.clone());
    let scope = config
        .routes
        .iter()
        .find(|r| r.credential == credential)
        .and_then(|r| r.scope.clone())
        .unwrap_or_else(|| "https://api.security.microsoft.com/.default".into());
    let scopes = format!("{scope} offline_access");
    let fail = |e: crate::token::TokenError| LoginError::Failed(e.to_string());
    let (status, start) = entra
        .post_form_json(
            &device_url,
            &[
                ("client_id", FormValue::Plain(&client_id)),
                ("scope", FormValue::Plain(&scopes)),
            ],
        )
        .await
        .map_err(fail)?;
    if !status.is_success() {
        return Err(LoginError::Failed(describe(&start)));
    }
    let fallback = format!(
        "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
        start["verification_uri"]
            .as_str()
            .unwrap_or("(no verification URI given)"),
        start["user_code"].as_str().unwrap_or("(no code given)")
    );
    show(start["message"].as_str().unwrap_or(&fallback));
    let device_code = start["device_code"].as_str().unwrap_or_default().to_owned();
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(start["expires_in"].as_u64().unwrap_or(900));
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() > deadline {
            return Err(LoginError::Failed(
                "the code expired before the sign-in completed; run login again".into(),
            ));
        }
        let form = [
            (
                "grant_type",
                FormValue::Plain("urn:ietf:params:oauth:grant-type:device_code"),
            ),
            ("client_id", FormValue::Plain(&client_id)),
            ("device_code", FormValue::Plain(&device_code)),
        ];
        let (status, answer) = entra
            .post_form_json(&token_url, &form)
            .await
            .map_err(fail)?;
        if status.is_success() {
            let refresh = answer["refresh_token"].as_str().ok_or_else(|| {
                LoginError::Failed("no refresh token was issued; is offline_access allowed?".into())
            })?;
            let login = StoredLogin {
                refresh_token: refresh.to_owned(),
                client_id,
                tenant,
                saved_at: unix_now(),
            };
            write_store(&store, &login).map_err(|e| {
                LoginError::Failed(format!("cannot write {}: {e}", store.display()))
            })?;
            return Ok(());
        }
        match answer["error"].as_str().unwrap_or("") {
            "authorization_pending" => {}
            "slow_down" => interval += 5,
            "authorization_declined" => {
                return Err(LoginError::Failed("the sign-in was declined".into()));
            }
            "expired_token" => {
                return Err(LoginError::Failed(
                    "the code expired before the sign-in completed; run login again".into(),
                ));
            }
            _ => return Err(LoginError::Failed(describe(&answer))),
        }
    }
}

fn describe(answer: &serde_json::Value) -> String {
    let code = answer["error_codes"][0]
        .as_u64()
        .map(|c| format!("AADSTS{c} "))
        .unwrap_or_default();
    format!(
        "{code}({})",
        answer["error"].as_str().unwrap_or("unexpected answer")
    )
}
