//! The token cache: one slot per (credential, tenant, scope), bounded by moka. A cold slot is
//! filled by exactly one fetch however many requests wait on it; a token past its refresh
//! time is served while one background refresh replaces it; a token within its safety margin
//! of expiry is never handed out; refusals are remembered for a short time so that many
//! requests on a bad credential cost the identity provider only a few calls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::entra::{RetryPolicy, backoff};
use super::{CredentialSource, EntraClient, Token, TokenError};

/// How long a refusal is answered from memory.
pub const REJECTION_TTL: Duration = Duration::from_secs(15);
/// How long "unavailable" is answered from memory when the provider named no time.
pub const UNAVAILABLE_TTL: Duration = Duration::from_secs(2);

/// Identifies a cached token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// `CredentialSource::id`.
    pub credential: u64,
    /// Tenant GUID or domain.
    pub tenant: Arc<str>,
    /// Scope.
    pub scope: Arc<str>,
}

#[derive(Default)]
struct Slot {
    current: ArcSwapOption<Token>,
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    /// Bumped when a fetch ends, so waiters can tell that one finished while they waited.
    generation: AtomicU64,
    /// The last failure and until when it is answered from memory.
    failure: Mutex<Option<(Instant, TokenError)>>,
    refreshing: AtomicBool,
}

impl Slot {
    fn usable(&self, now: Instant) -> Option<Token> {
        self.current
            .load()
            .as_deref()
            .filter(|t| t.is_usable(now))
            .cloned()
    }

    fn remembered_failure(&self, now: Instant) -> Option<TokenError> {
        let guard = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|(until, _)| now < *until)
            .map(|(_, e)| e.clone())
    }

    /// Records a fetch's outcome.
    fn finish(&self, result: &Result<Token, TokenError>) {
        let now = Instant::now();
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(token) => {
                self.current.store(Some(Arc::new(token.clone())));
                *failure = None;
            }
            Err(e @ (TokenError::Rejected { .. } | TokenError::LoginRequired { .. })) => {
                *failure = Some((now + REJECTION_TTL, e.clone()))
            }
            Err(e @ TokenError::Unavailable { retry_after, .. }) => {
                let ttl = retry_after
                    .unwrap_or(UNAVAILABLE_TTL)
                    .min(Duration::from_secs(30));
                *failure = Some((now + ttl, e.clone()));
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Counters of the cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Requests served a cached token.
    pub hits: AtomicU64,
    /// Requests that had to wait for a fetch.
    pub misses: AtomicU64,
    /// Background refreshes started.
    pub refreshes: AtomicU64,
}

/// Tokens by (credential, tenant, scope).
pub struct TokenCache {
    slots: moka::sync::Cache<TokenKey, Arc<Slot>>,
    entra: EntraClient,
    cancel: CancellationToken,
    /// Counters.
    pub stats: Arc<CacheStats>,
}

impl TokenCache {
    /// A cache holding at most `capacity` keys; background refreshes stop on `cancel`.
    pub fn new(entra: EntraClient, capacity: u64, cancel: CancellationToken) -> Self {
        let slots = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(Duration::from_secs(6 * 3600))
            .support_invalidation_closures()
            .build();
        TokenCache {
            slots,
            entra,
            cancel,
            stats: Arc::default(),
        }
    }

    /// The identity provider client.
    pub fn entra(&self) -> &EntraClient {
        &self.entra
    }

    /// A usable token for `key`, fetching one if needed.
    pub async fn get(
        &self,
        source: &Arc<CredentialSource>,
        key: &TokenKey,
    ) -> Result<Token, TokenError> {
        let slot = self.slot(key);
        let now = Instant::now();
        if let Some(token) = slot.usable(now) {
            if now >= token.refresh_at {
                self.spawn_refresh(slot, source.clone(), key.clone());
            }
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(token);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed: the fetch is rare and its future large; every request's future would carry it.
        Box::pin(self.fetch_foreground(slot, source, key)).await
    }

    /// Drops `rejected` (an upstream answered 401 to it) unless a newer token replaced it.
    pub fn invalidate(&self, key: &TokenKey, rejected: &Token) {
        if let Some(slot) = self.slots.get(key) {
            let current = slot.current.load();
            if current
                .as_deref()
                .is_some_and(|t| t.header() == rejected.header())
            {
                slot.current.store(None);
            }
        }
    }

    /// Drops the tokens of credentials that are no longer configured as they were (a reload
    /// changed them): only the IDs in `live` keep their tokens.
    pub fn retain_credentials(&self, live: &[u64]) {
        let live = live.to_vec();
        if let Err(e) = self
            .slots
            .invalidate_entries_if(move |k, _| !live.contains(&k.credential))
        {
            tracing::warn!(error = %e, "could not drop the tokens of changed credentials");
        }
    }

    /// Seconds left on each cached token, for metrics: (credential id, tenant, seconds).
    pub fn expiries(&self) -> Vec<(u64, Arc<str>, f64)> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter_map(|(k, slot)| {
                let t = slot.current.load_full()?;
                Some((
                    k.credential,
                    k.tenant.clone(),
                    t.expires_at.saturating_duration_since(now).as_secs_f64(),
                ))
            })
            .collect()
    }

    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(key) {
            return slot;
        }
        self.slots
            .get_with(key.clone(), || Arc::new(Slot::default()))
    }

    async fn fetch_foreground(
        &self,
        slot: Arc<Slot>,
        source: &Arc<CredentialSource>,
        key: &TokenKey,
    ) -> Result<Token, TokenError> {
        let seen = slot.generation.load(Ordering::Acquire);
        if let Some(err) = slot.remembered_failure(Instant::now()) {
            return Err(err);
        }
        let guard = slot.fetch_lock.clone().lock_owned().await;
        if let Some(token) = slot.usable(Instant::now()) {
            return Ok(token);
        }
        if slot.generation.load(Ordering::Acquire) != seen {
            if let Some(err) = slot.remembered_failure(Instant::now()) {
                return Err(err);
            }
        }
        // The fetch runs in its own task holding the lock, so it completes (and the waiters
        // behind it get its result) even if the request that started it goes away.
        let (entra, source, key) = (self.entra.clone(), source.clone(), key.clone());
        let task = tokio::spawn(async move {
            let result = source.fetch(&entra, &key.tenant, &key.scope).await;
            slot.finish(&result);
            drop(guard);
            result
        });
        task.await.unwrap_or_else(|_| {
            Err(TokenError::Unavailable {
                reason: "the token fetch task failed".into(),
                retry_after: None,
            })
        })
    }

    fn spawn_refresh(&self, slot: Arc<Slot>, source: Arc<CredentialSource>, key: TokenKey) {
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(credential = %source.name, tenant = %key.tenant, "refreshing a token ahead of expiry");
        let entra = self.entra.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = refresh_loop(&slot, &source, &entra, &key) => {}
                _ = cancel.cancelled() => {}
            }
            slot.refreshing.store(false, Ordering::Release);
        });
    }
}

/// Refreshes until a new token is stored, the credential is refused, or the current token is
/// no longer usable (then the next request fetches in the foreground). Never gives up on a
/// transient error while the current token lasts.
async fn refresh_loop(slot: &Slot, source: &CredentialSource, entra: &EntraClient, key: &TokenKey) {
    let policy = RetryPolicy {
        cap: Duration::from_secs(30),
        ..entra.retry.clone()
    };
    let mut round = 0;
    loop {
        let guard = slot.fetch_lock.lock().await;
        let now = Instant::now();
        match slot.current.load().as_deref() {
            Some(t) if now < t.refresh_at => return,
            Some(t) if t.is_usable(now) => {}
            _ => return,
        }
        let result = source.fetch(entra, &key.tenant, &key.scope).await;
        match &result {
            Ok(_) | Err(TokenError::Rejected { .. } | TokenError::LoginRequired { .. }) => {
                slot.finish(&result);
                return;
            }
            Err(TokenError::Unavailable { .. }) => {}
        }
        drop(guard);
        round += 1;
        let until_unusable = slot.current.load().as_deref().map_or(Duration::ZERO, |t| {
            t.usable_until.saturating_duration_since(Instant::now())
        });
        if until_unusable.is_zero() {
            return;
        }
        tokio::time::sleep(backoff(&policy, round.min(8)).min(until_unusable)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests;
