//! Tests of the token cache with a scripted credential and a paused clock.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU32;

use super::*;
use crate::token::{Credential, CredentialSource};

/// A credential that answers from a script and counts its fetches.
#[derive(Debug, Default)]
pub struct Fake {
    pub calls: AtomicU32,
    /// Lifetime of issued tokens.
    pub lifetime: Mutex<Duration>,
    /// Scripted failures, used before issuing tokens.
    pub failures: Mutex<VecDeque<TokenError>>,
    /// Delay of each fetch.
    pub delay: Mutex<Duration>,
}

impl Fake {
    pub async fn fetch(&self, tenant: &str) -> Result<Token, TokenError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let lifetime = *self.lifetime.lock().unwrap();
        Ok(Token::new(&format!("tok-{tenant}-{n}"), Instant::now(), lifetime, None).unwrap())
    }
}

fn setup(lifetime_secs: u64) -> (TokenCache, Arc<CredentialSource>, TokenKey) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = crate::tls::client_config(None).unwrap();
    let cache = TokenCache::new(
        EntraClient::new(tls).unwrap(),
        1000,
        CancellationToken::new(),
    );
    let fake = Fake {
        lifetime: Mutex::new(Duration::from_secs(lifetime_secs)),
        ..Fake::default()
    };
    let source = Arc::new(CredentialSource::new("app", 1, Credential::Test(fake)));
    let key = TokenKey {
        credential: 1,
        tenant: "t1".into(),
        scope: "s/.default".into(),
    };
    (cache, source, key)
}

fn fake(source: &CredentialSource) -> &Fake {
    match &source.credential {
        Credential::Test(f) => f,
        _ => unreachable!(),
    }
}

fn calls(source: &CredentialSource) -> u32 {
    fake(source).calls.load(Ordering::SeqCst)
}

fn rejected() -> TokenError {
    TokenError::Rejected {
        error: "invalid_client".into(),
        aadsts: Some(7000215),
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_requests_cause_one_fetch() {
    let (cache, source, key) = setup(3600);
    *fake(&source).delay.lock().unwrap() = Duration::from_millis(50);
    let cache = Arc::new(cache);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, source, key) = (cache.clone(), source.clone(), key.clone());
            tokio::spawn(async move { cache.get(&source, &key).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().header(), "Bearer tok-t1-1");
    }
    assert_eq!(calls(&source), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_token_is_never_injected() {
    let (cache, source, key) = setup(6);
    let first = cache.get(&source, &key).await.unwrap();
    // Past the safety margin (1 s for a 6 s token) but before the real expiry.
    tokio::time::advance(Duration::from_millis(5_100)).await;
    let second = cache.get(&source, &key).await.unwrap();
    assert_ne!(first.header(), second.header());
    assert!(second.is_usable(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn token_is_refreshed_ahead_while_the_old_one_is_served() {
    let (cache, source, key) = setup(60);
    let first = cache.get(&source, &key).await.unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    let during = cache.get(&source, &key).await.unwrap();
    assert_eq!(
        during.header(),
        first.header(),
        "the current token is served while refreshing"
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls(&source), 2);
    let after = cache.get(&source, &key).await.unwrap();
    assert_eq!(after.header(), "Bearer tok-t1-2");
}

#[tokio::test(start_paused = true)]
async fn background_refresh_survives_transient_failures() {
    let (cache, source, key) = setup(60);
    cache.get(&source, &key).await.unwrap();
    {
        let mut f = fake(&source).failures.lock().unwrap();
        for _ in 0..3 {
            f.push_back(TokenError::Unavailable {
                reason: "503".into(),
                retry_after: None,
            });
        }
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        cache.get(&source, &key).await.unwrap().header(),
        "Bearer tok-t1-1"
    );
    // Let the refresher back off and retry; the old token stays in service meanwhile.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(calls(&source), 5);
    assert_eq!(
        cache.get(&source, &key).await.unwrap().header(),
        "Bearer tok-t1-5"
    );
}

#[tokio::test(start_paused = true)]
async fn rejections_are_remembered_briefly() {
    let (cache, source, key) = setup(3600);
    {
        let mut f = fake(&source).failures.lock().unwrap();
        f.push_back(rejected());
        f.push_back(rejected());
    }
    for _ in 0..100 {
        assert_eq!(cache.get(&source, &key).await.unwrap_err(), rejected());
    }
    assert_eq!(calls(&source), 1);
    tokio::time::advance(REJECTION_TTL + Duration::from_millis(1)).await;
    assert!(cache.get(&source, &key).await.is_err());
    assert_eq!(calls(&source), 2);
    tokio::time::advance(REJECTION_TTL + Duration::from_millis(1)).await;
    assert!(cache.get(&source, &key).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn waiters_share_a_failed_fetch_instead_of_repeating_it() {
    let (cache, source, key) = setup(3600);
    *fake(&source).delay.lock().unwrap() = Duration::from_millis(50);
    fake(&source).failures.lock().unwrap().push_back(rejected());
    let cache = Arc::new(cache);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, source, key) = (cache.clone(), source.clone(), key.clone());
            tokio::spawn(async move { cache.get(&source, &key).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    assert_eq!(calls(&source), 1);
}

#[tokio::test(start_paused = true)]
async fn invalidate_drops_only_the_rejected_token() {
    let (cache, source, key) = setup(3600);
    let first = cache.get(&source, &key).await.unwrap();
    cache.invalidate(&key, &first);
    let second = cache.get(&source, &key).await.unwrap();
    assert_ne!(first.header(), second.header());
    cache.invalidate(&key, &first);
    assert_eq!(
        cache.get(&source, &key).await.unwrap().header(),
        second.header()
    );
    assert_eq!(calls(&source), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_cause_a_second_fetch() {
    let (cache, source, key) = setup(3600);
    *fake(&source).delay.lock().unwrap() = Duration::from_millis(100);
    let cache = Arc::new(cache);
    let (c2, s2, k2) = (cache.clone(), source.clone(), key.clone());
    let first = tokio::spawn(async move { c2.get(&s2, &k2).await });
    tokio::time::advance(Duration::from_millis(10)).await;
    first.abort();
    let second = cache.get(&source, &key).await.unwrap();
    assert_eq!(second.header(), "Bearer tok-t1-1");
    assert_eq!(calls(&source), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_dropped_after_a_401_is_never_handed_out_again() {
    let (cache, source, key) = setup(3600);
    let first = cache.get(&source, &key).await.unwrap();
    assert_eq!(
        cache.get(&source, &key).await.unwrap().header(),
        first.header()
    );
    assert_eq!(calls(&source), 1);
    assert_eq!(cache.stats.hits.load(Ordering::Relaxed), 1);
    cache.invalidate(&key, &first);
    assert_eq!(
        cache.get(&source, &key).await.unwrap().header(),
        "Bearer tok-t1-2"
    );
    assert_eq!(calls(&source), 2);
}

#[tokio::test(start_paused = true)]
async fn tenants_and_scopes_get_their_own_tokens() {
    let (cache, source, key) = setup(3600);
    for round in 0..2 {
        for i in 0..200 {
            let tenant: Arc<str> = format!("tenant-{i}").into();
            let k = TokenKey {
                tenant: tenant.clone(),
                ..key.clone()
            };
            let token = cache.get(&source, &k).await.unwrap();
            let value = token.header().to_str().unwrap();
            assert!(
                value.starts_with(&format!("Bearer tok-{tenant}-")),
                "round {round}: {tenant} got {value}"
            );
        }
        let other = TokenKey {
            scope: "other/.default".into(),
            ..key.clone()
        };
        assert!(
            cache
                .get(&source, &other)
                .await
                .unwrap()
                .header()
                .to_str()
                .unwrap()
                .starts_with("Bearer tok-t1-")
        );
    }
    assert_eq!(calls(&source), 201, "one fetch per tenant and scope");
}
