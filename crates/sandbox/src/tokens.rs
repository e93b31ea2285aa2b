//! Access tokens: JWT-looking strings, the registry of issued ones, and their validation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::state::lock;
use super::time::unix_now;

/// Entries kept before expired tokens are pruned from the registry.
const PRUNE_ABOVE: usize = 4096;

/// What a grant established: who asked, for which tenant and audience.
#[derive(Clone, Debug)]
pub(super) struct Grant {
    pub tenant: String,
    pub client_id: String,
    pub audience: String,
}

/// A freshly minted token and the lifetime it was given.
pub(super) struct Minted {
    pub access_token: String,
    pub lifetime_secs: u64,
    pub issued_at: u64,
}

/// The caller behind a valid bearer token, for the API handlers.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    pub tenant: String,
    /// The app (client ID) the token was issued to.
    pub client_id: String,
}

/// Why a bearer token was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AuthFailure {
    Missing,
    Unknown,
    Expired,
    Revoked,
    WrongAudience(String),
}

impl AuthFailure {
    /// The key this failure is counted under in `/_sandbox/stats`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::WrongAudience(_) => "wrong_audience",
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthFailure::Missing => {
                "Authorization header is missing or is not a Bearer token.".into()
            }
            AuthFailure::Unknown => "The access token is invalid.".into(),
            AuthFailure::Expired => "The access token has expired.".into(),
            AuthFailure::Revoked => "The access token has been revoked.".into(),
            AuthFailure::WrongAudience(aud) => {
                format!("The access token audience '{aud}' is not valid for this API.")
            }
        }
    }
}

/// The reasons the API counts refused bearer tokens under; `wrong_tenant` is a valid token for
/// another tenant than the request's `x-sandbox-expect-tenant` names.
const REJECTION_LABELS: [&str; 6] = [
    "missing",
    "unknown",
    "expired",
    "revoked",
    "wrong_audience",
    "wrong_tenant",
];

/// Refused bearer tokens by reason, for `/_sandbox/stats`.
#[derive(Default)]
pub(super) struct Rejections(Mutex<BTreeMap<&'static str, u64>>);

impl Rejections {
    pub fn count(&self, label: &'static str) {
        *lock(&self.0).entry(label).or_default() += 1;
    }

    /// Every reason with its count, zeros included.
    pub fn snapshot(&self) -> Value {
        let counts = lock(&self.0);
        let all =
            REJECTION_LABELS.map(|l| (l.to_owned(), json!(counts.get(l).copied().unwrap_or(0))));
        Value::Object(all.into_iter().collect())
    }
}

struct Issued {
    grant: Grant,
    expires_at: Instant,
    generation: u64,
}

/// Every token issued, with a generation counter that [`TokenStore::revoke_all`] bumps.
pub(super) struct TokenStore {
    issued: Mutex<HashMap<String, Issued>>,
    generation: AtomicU64,
    lifetime_secs: AtomicU64,
}

impl TokenStore {
    pub fn new(lifetime_secs: u64) -> Self {
        TokenStore {
            issued: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            lifetime_secs: AtomicU64::new(lifetime_secs),
        }
    }

    pub fn set_lifetime_secs(&self, secs: u64) {
        self.lifetime_secs.store(secs, Ordering::Relaxed);
    }

    pub fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub fn issue(&self, grant: Grant) -> Minted {
        let lifetime_secs = self.lifetime_secs.load(Ordering::Relaxed);
        let issued_at = unix_now();
        let access_token = jwt_like(&grant, issued_at, lifetime_secs);
        let entry = Issued {
            grant,
            expires_at: expiry(lifetime_secs),
            generation: self.generation.load(Ordering::Relaxed),
        };
        let mut issued = lock(&self.issued);
        if issued.len() > PRUNE_ABOVE {
            let now = Instant::now();
            issued.retain(|_, t| t.expires_at > now);
        }
        issued.insert(access_token.clone(), entry);
        Minted {
            access_token,
            lifetime_secs,
            issued_at,
        }
    }

    /// Checks an `Authorization` header value against the registry and `audiences`.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        audiences: &[String],
    ) -> Result<Caller, AuthFailure> {
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(AuthFailure::Missing)?;
        let issued = lock(&self.issued);
        let entry = issued.get(token).ok_or(AuthFailure::Unknown)?;
        if entry.generation != self.generation.load(Ordering::Relaxed) {
            return Err(AuthFailure::Revoked);
        }
        if entry.expires_at <= Instant::now() {
            return Err(AuthFailure::Expired);
        }
        let audience = &entry.grant.audience;
        if !audiences.iter().any(|a| normalize_audience(a) == audience) {
            return Err(AuthFailure::WrongAudience(audience.clone()));
        }
        Ok(Caller {
            tenant: entry.grant.tenant.clone(),
            client_id: entry.grant.client_id.clone(),
        })
    }
}

/// When a token issued now with this lifetime expires; huge lifetimes mean "about never".
fn expiry(lifetime_secs: u64) -> Instant {
    let now = Instant::now();
    let century = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(Duration::from_secs(lifetime_secs))
        .or_else(|| now.checked_add(century))
        .unwrap_or(now)
}

/// An audience without its trailing slash (`https://graph.microsoft.com/` = `https://graph.microsoft.com`).
pub(super) fn normalize_audience(audience: &str) -> &str {
    audience.strip_suffix('/').unwrap_or(audience)
}

/// `header.payload.signature` in base64url, so a leaked token is recognisable in logs.
fn jwt_like(grant: &Grant, iat: u64, lifetime_secs: u64) -> String {
    let issuer = format!("https://sts.windows.net/{}/", grant.tenant);
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "sandbox"});
    let payload = json!({
        "aud": grant.audience, "iss": issuer, "idp": issuer,
        "iat": iat, "nbf": iat, "exp": iat.saturating_add(lifetime_secs),
        "appid": grant.client_id, "appidacr": "1", "sub": grant.client_id, "tid": grant.tenant,
        "roles": ["Incident.Read.All", "Alert.Read.All", "Machine.Read.All", "AdvancedQuery.Read.All"],
        "uti": uuid::Uuid::new_v4().simple().to_string(), "ver": "1.0",
    });
    let signature: Vec<u8> = (0..64).map(|_| fastrand::u8(..)).collect();
    format!(
        "{}.{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(payload.to_string().as_bytes()),
        base64url(&signature)
    )
}

/// Unpadded base64url (RFC 4648 §5).
pub(super) fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(audience: &str) -> Grant {
        Grant {
            tenant: "t1".into(),
            client_id: "c1".into(),
            audience: audience.into(),
        }
    }

    #[test]
    fn base64url_matches_rfc_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn revoked_token_is_refused() {
        let store = TokenStore::new(60);
        let auds = vec!["https://graph.microsoft.com".to_owned()];
        let token = store
            .issue(grant("https://graph.microsoft.com"))
            .access_token;
        let header = format!("Bearer {token}");
        assert!(store.authenticate(Some(&header), &auds).is_ok());
        store.revoke_all();
        assert_eq!(
            store.authenticate(Some(&header), &auds).err(),
            Some(AuthFailure::Revoked)
        );
        let fresh = format!(
            "Bearer {}",
            store
                .issue(grant("https://graph.microsoft.com"))
                .access_token
        );
        assert!(store.authenticate(Some(&fresh), &auds).is_ok());
    }

    #[test]
    fn wrong_audience_and_missing_header_are_refused() {
        let store = TokenStore::new(60);
        let token = store.issue(grant("https://example.com")).access_token;
        let auds = vec!["https://graph.microsoft.com".to_owned()];
        let got = store.authenticate(Some(&format!("Bearer {token}")), &auds);
        assert_eq!(
            got.err(),
            Some(AuthFailure::WrongAudience("https://example.com".into()))
        );
        assert_eq!(
            store.authenticate(None, &auds).err(),
            Some(AuthFailure::Missing)
        );
        assert_eq!(
            store
                .authenticate(Some(&format!("Basic {token}")), &auds)
                .err(),
            Some(AuthFailure::Missing)
        );
    }

    #[tokio::test]
    async fn token_past_its_lifetime_is_refused() {
        let store = TokenStore::new(0);
        let auds = vec!["a".to_owned()];
        let header = format!("Bearer {}", store.issue(grant("a")).access_token);
        assert_eq!(
            store.authenticate(Some(&header), &auds).err(),
            Some(AuthFailure::Expired)
        );
        store.set_lifetime_secs(60);
        let header = format!("Bearer {}", store.issue(grant("a")).access_token);
        assert!(store.authenticate(Some(&header), &auds).is_ok());
        store.set_lifetime_secs(u64::MAX);
        let header = format!("Bearer {}", store.issue(grant("a")).access_token);
        assert!(store.authenticate(Some(&header), &auds).is_ok());
    }
}
