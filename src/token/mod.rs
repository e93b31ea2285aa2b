//! Getting Entra ID tokens: the token type, its errors, and the credential sources that fetch
//! one for a (tenant, scope). Caching and single-flight live in `cache`; the HTTP exchange with
//! the identity provider, its parsing and retries in `entra`; one file per credential kind.

mod build;
pub mod cache;
pub mod certificate;
mod client_secret;
pub mod device_code;
pub mod entra;
pub mod managed_identity;
mod password;
mod workload_identity;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::time::Instant;

pub use build::build_credential;
pub use cache::{TokenCache, TokenKey};
pub use certificate::ClientCertificate;
pub use client_secret::ClientSecret;
pub use entra::{EntraClient, TokenEndpoint};
pub use managed_identity::ManagedIdentity;
pub use password::Password;
pub use workload_identity::WorkloadIdentity;

use crate::error::ProxyError;

/// The longest a token is kept back from expiry: it is never injected closer to its end.
pub const MAX_SAFETY_MARGIN: Duration = Duration::from_secs(60);

/// An access token, ready to inject. `Debug` never shows it.
#[derive(Clone)]
pub struct Token {
    /// `Bearer ...`, marked sensitive.
    header: HeaderValue,
    /// When the provider says it expires.
    pub expires_at: Instant,
    /// After this it is not injected any more.
    pub usable_until: Instant,
    /// After this a background refresh starts.
    pub refresh_at: Instant,
}

impl Token {
    /// A token valid for `lifetime` from `now`, refreshed after `refresh_in` when given (and
    /// sooner than the safety margin), else at half its lifetime.
    pub fn new(
        access_token: &str,
        now: Instant,
        lifetime: Duration,
        refresh_in: Option<Duration>,
    ) -> Option<Token> {
        let mut header = HeaderValue::try_from(format!("Bearer {access_token}")).ok()?;
        header.set_sensitive(true);
        let margin = (lifetime / 6).min(MAX_SAFETY_MARGIN);
        let usable_until = now + lifetime - margin;
        let refresh_at = match refresh_in {
            Some(r) if now + r < usable_until => now + r,
            _ => now + lifetime / 2,
        };
        Some(Token {
            header,
            expires_at: now + lifetime,
            usable_until,
            refresh_at,
        })
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// True while the token may be injected.
    pub fn is_usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("header", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why no token could be had. Holds no secret and no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The identity provider refused the request: retrying will not help.
    #[error("{}", describe_rejection(.error, *.aadsts))]
    Rejected {
        /// OAuth error code (`invalid_client`, ...).
        error: String,
        /// The AADSTS number, when Entra gave one.
        aadsts: Option<u32>,
    },
    /// A user must sign in (again): no stored refresh token, or it is dead.
    #[error("{} (credential {credential:?}): sign in with `defender-proxy login --credential {credential}`", .aadsts.map(|c| format!("AADSTS{c}: the sign-in is no longer valid")).unwrap_or_else(|| "no user has signed in yet".into()))]
    LoginRequired {
        /// The credential to sign in with.
        credential: String,
        /// The AADSTS number, when Entra refused a refresh token.
        aadsts: Option<u32>,
    },
    /// The identity provider could not be reached or kept failing.
    #[error("{reason}")]
    Unavailable {
        /// What went wrong, without secrets.
        reason: String,
        /// When the provider asked to come back.
        retry_after: Option<Duration>,
    },
}

impl TokenError {
    /// True when retrying later might succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. })
    }

    /// The proxy's answer for this error on `credential`.
    pub fn to_proxy_error(&self, credential: &str) -> ProxyError {
        match self {
            TokenError::Rejected { .. } => ProxyError::TokenRejected {
                message: format!("credential {credential:?}: {self}"),
            },
            TokenError::LoginRequired { .. } => ProxyError::TokenRejected {
                message: self.to_string(),
            },
            TokenError::Unavailable { retry_after, .. } => ProxyError::TokenUnavailable {
                message: format!("credential {credential:?}: {self}"),
                retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
            },
        }
    }
}

/// A readable explanation of well-known AADSTS codes.
fn describe_rejection(error: &str, aadsts: Option<u32>) -> String {
    let hint = match aadsts {
        Some(7000215) => "the client secret is wrong",
        Some(7000222) => "the client secret has expired",
        Some(700016) => {
            "the application is not found in this tenant (not consented, or wrong client ID)"
        }
        Some(90002) => "the tenant was not found",
        Some(65001) | Some(650057) => "admin consent is missing for this application",
        Some(70011) => "the scope is not valid for this application",
        Some(700024) => "the client assertion is not valid (clock, audience or expiry)",
        Some(700027) => "the client assertion signature or certificate is not registered",
        Some(50196) => "Entra ID detected a request loop; slowing down",
        Some(50126) => "the user name or password is wrong",
        Some(50076) | Some(50079) => "multi-factor authentication is required",
        Some(700082) | Some(70008) => "the refresh token has expired; sign in again",
        _ => "",
    };
    let code = aadsts.map(|c| format!("AADSTS{c} ")).unwrap_or_default();
    if hint.is_empty() {
        format!("{code}({error})")
    } else {
        format!("{code}({error}): {hint}")
    }
}

/// The outcome of a credential's last token attempt, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// No attempt yet.
    Untried,
    /// The last attempt succeeded.
    Ok,
    /// The last attempt failed, with a safe reason.
    Failed(String),
}

/// Counters of one credential's token fetches.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Tokens fetched.
    pub ok: AtomicU64,
    /// Refusals by the identity provider.
    pub rejected: AtomicU64,
    /// Failures to reach it, after retries.
    pub unavailable: AtomicU64,
}

/// The kinds of credential the proxy can fetch tokens with.
#[derive(Debug)]
pub enum Credential {
    /// Client credentials with a shared secret.
    ClientSecret(ClientSecret),
    /// Client credentials with a certificate-signed assertion.
    ClientCertificate(ClientCertificate),
    /// Client credentials with a federated (Kubernetes) token as assertion.
    WorkloadIdentity(WorkloadIdentity),
    /// Resource-owner password credentials (legacy user context).
    Password(Password),
    /// Azure managed identity (IMDS or App Service).
    ManagedIdentity(ManagedIdentity),
    /// A user signed in with the device code flow.
    DeviceCode(device_code::DeviceCode),
    /// A scripted source for the cache's unit tests.
    #[cfg(test)]
    Test(cache::tests::Fake),
}

/// The last outcome per (tenant, scope) of the tokens readiness depends on.
type Watched = HashMap<(Arc<str>, Arc<str>), Health>;

/// A named credential and what it has done lately.
#[derive(Debug)]
pub struct CredentialSource {
    /// Its name in `proxy.toml`.
    pub name: Arc<str>,
    /// Distinguishes configurations: a changed credential gets new cache keys.
    pub id: u64,
    /// How to fetch.
    pub credential: Credential,
    /// The last attempt's outcome.
    pub health: ArcSwap<Health>,
    /// Fetch counters.
    pub stats: FetchStats,
    /// The last outcome for each (tenant, scope) readiness depends on (see `crate::warmup`).
    watched: std::sync::Mutex<Watched>,
}

impl CredentialSource {
    /// A source with no attempt yet.
    pub fn new(name: &str, id: u64, credential: Credential) -> Self {
        CredentialSource {
            name: name.into(),
            id,
            credential,
            health: ArcSwap::from_pointee(Health::Untried),
            stats: FetchStats::default(),
            watched: std::sync::Mutex::default(),
        }
    }

    /// Makes readiness depend on the tokens of (`tenant`, `scope`), not fetched yet.
    pub fn watch(&self, tenant: &str, scope: &str) {
        self.watched_lock()
            .entry((tenant.into(), scope.into()))
            .or_insert(Health::Untried);
    }

    /// Whether the watched tokens were all had, else the first reason why not; `None` when
    /// nothing is watched.
    pub fn readiness(&self) -> Option<Result<(), String>> {
        let watched = self.watched_lock();
        if watched.is_empty() {
            return None;
        }
        let mut keys: Vec<_> = watched.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for ((tenant, scope), health) in keys {
            match health {
                Health::Ok => {}
                Health::Untried => {
                    return Some(Err(format!(
                        "warming up: no token yet for tenant {tenant}, scope {scope}"
                    )));
                }
                Health::Failed(reason) => return Some(Err(reason.clone())),
            }
        }
        Some(Ok(()))
    }

    fn watched_lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches one token (with the provider's retries) and records the outcome.
    pub async fn fetch(
        &self,
        entra: &EntraClient,
        tenant: &str,
        scope: &str,
    ) -> Result<Token, TokenError> {
        let result = match &self.credential {
            Credential::ClientSecret(c) => c.fetch(entra, tenant, scope).await,
            Credential::ClientCertificate(c) => c.fetch(entra, tenant, scope).await,
            Credential::WorkloadIdentity(c) => c.fetch(entra, tenant, scope).await,
            Credential::Password(c) => c.fetch(entra, tenant, scope).await,
            Credential::ManagedIdentity(c) => c.fetch(entra, scope).await,
            Credential::DeviceCode(c) => c.fetch(entra, tenant, scope).await,
            #[cfg(test)]
            Credential::Test(f) => f.fetch(tenant).await,
        };
        self.record(&result, tenant, scope);
        result
    }

    fn record(&self, result: &Result<Token, TokenError>, tenant: &str, scope: &str) {
        let (counter, health) = match result {
            Ok(_) => (&self.stats.ok, Health::Ok),
            Err(e @ (TokenError::Rejected { .. } | TokenError::LoginRequired { .. })) => (
                &self.stats.rejected,
                Health::Failed(format!("tenant {tenant}: {e}")),
            ),
            Err(e @ TokenError::Unavailable { .. }) => (
                &self.stats.unavailable,
                Health::Failed(format!("tenant {tenant}: {e}")),
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(t) => {
                let expires_in_secs = t
                    .expires_at
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs();
                tracing::info!(credential = %self.name, tenant, expires_in_secs, outcome = "ok", "token fetched")
            }
            Err(e) => {
                let (outcome, aadsts) = match e {
                    TokenError::Rejected { aadsts, .. }
                    | TokenError::LoginRequired { aadsts, .. } => ("rejected", *aadsts),
                    TokenError::Unavailable { .. } => ("unavailable", None),
                };
                tracing::warn!(credential = %self.name, tenant, outcome, aadsts, error = %e, "token fetch failed")
            }
        }
        if let Some(outcome) = self.watched_lock().get_mut(&(tenant.into(), scope.into())) {
            // A token endpoint that is down for a while does not make a proxy with a usable
            // token unready; a refusal does.
            let transient = matches!(result, Err(TokenError::Unavailable { .. }));
            if !(transient && *outcome == Health::Ok) {
                *outcome = health.clone();
            }
        }
        self.health.store(Arc::new(health));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_hides_the_value() {
        let t = Token::new(
            "eyJsecret.token.value",
            Instant::now(),
            Duration::from_secs(3600),
            None,
        )
        .unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("eyJsecret"), "{dbg}");
        assert!(t.header().is_sensitive());
    }

    #[test]
    fn refresh_defaults_to_half_life_and_margin_is_bounded() {
        let now = Instant::now();
        let t = Token::new("x", now, Duration::from_secs(3600), None).unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(1800));
        assert_eq!(t.expires_at - t.usable_until, MAX_SAFETY_MARGIN);
        let short = Token::new("x", now, Duration::from_secs(6), None).unwrap();
        assert_eq!(
            short.expires_at - short.usable_until,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn refresh_in_is_honoured_only_before_the_margin() {
        let now = Instant::now();
        let t = Token::new(
            "x",
            now,
            Duration::from_secs(3600),
            Some(Duration::from_secs(600)),
        )
        .unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(600));
        let late = Token::new(
            "x",
            now,
            Duration::from_secs(3600),
            Some(Duration::from_secs(3590)),
        )
        .unwrap();
        assert_eq!(late.refresh_at - now, Duration::from_secs(1800));
    }

    #[test]
    fn rejections_name_the_aadsts_code_and_meaning() {
        let e = TokenError::Rejected {
            error: "invalid_client".into(),
            aadsts: Some(7000215),
        };
        assert_eq!(
            e.to_string(),
            "AADSTS7000215 (invalid_client): the client secret is wrong"
        );
        let p = e.to_proxy_error("app");
        assert!(matches!(p, ProxyError::TokenRejected { .. }));
        assert!(p.to_string().contains("AADSTS7000215"));
    }
}
