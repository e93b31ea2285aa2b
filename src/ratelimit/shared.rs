//! The shared store: replicas keep one set of windows per (limit, tenant) in Redis.
//!
//! A request costs one call: `reserve.lua`, loaded once and run by EVALSHA, finds the earliest
//! time both windows have room (after any pause, never before an earlier reservation), reserves
//! it when the wait fits the budget and returns the wait. Time is Redis's own (`TIME`), so the
//! replicas' clocks never matter. A request that is cancelled while it waits removes its
//! reservation (`ZREM`); one that waited checks for a pause set meanwhile (`paused.lua`).
//!
//! When Redis is unreachable or slower than `timeout_ms`, the store says so and the limiter
//! decides locally with each limit divided by `replicas_hint`; the store then lets one call
//! through per backoff interval to find out when Redis is back. Tokens are never stored here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Admission, LimitSpec, Limiter, Refused};
use crate::config::{ConfigError, RateLimitStoreConfig, read_secret};
use crate::secret::Secret;

/// First wait before a degraded store tries Redis again; doubled up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between tries while degraded.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The spans of the two windows (a minute and an hour, except in tests that scale time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// The short window.
    pub minute: Duration,
    /// The long window.
    pub hour: Duration,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            minute: Duration::from_secs(60),
            hour: Duration::from_secs(3600),
        }
    }
}

impl Windows {
    /// Both windows divided by `divisor` (at least 1).
    pub fn scaled(divisor: u32) -> Windows {
        let d = divisor.max(1);
        let w = Windows::default();
        Windows {
            minute: w.minute / d,
            hour: w.hour / d,
        }
    }
}

/// What Redis answered to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Reserved: send after this wait.
    After(Duration),
    /// Not reserved: the next free slot is this far off.
    Refused(Duration),
}

/// The shared budget of (limit, tenant) as one reservation found it (Redis clock): requests
/// sent within the last minute and the last hour, and those waiting for a later slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Sent within the last minute.
    pub minute: u32,
    /// Sent within the last hour.
    pub hour: u32,
    /// Reserved for later.
    pub queued: u32,
}

/// Redis could not be asked (unreachable, slow, or degraded and not yet due for a retry).
#[derive(Debug)]
pub struct Unavailable;

/// The store's connection and its health.
pub struct RedisStore {
    connection: ConnectionManager,
    reserve: Script,
    pause: Script,
    paused: Script,
    prefix: String,
    timeout: Duration,
    /// Each process's reservations are named `<replica>:<n>`.
    replica: String,
    sequence: AtomicU64,
    degraded: AtomicBool,
    /// While degraded: when (ms since `started`) the next try is due, and the current backoff.
    retry_at_ms: AtomicU64,
    backoff_ms: AtomicU64,
    started: Instant,
    /// Decisions taken locally because Redis could not be asked.
    pub degraded_decisions: Counter,
}

/// A Redis client for `config`: URL, user and password (the password never leaves here).
pub fn client(config: &RateLimitStoreConfig) -> Result<Client, ConfigError> {
    let path = "rate_limit_store";
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| ConfigError::new(format!("{path}.url"), "is required"))?;
    let password: Option<Secret> = read_secret(
        &config.password,
        &config.password_file,
        &format!("{path}.password"),
    )?;
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| ConfigError::new(format!("{path}.url"), e.to_string()))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        settings = settings.set_password(p.expose());
    }
    info = info.set_redis_settings(settings);
    Client::open(info).map_err(|e| ConfigError::new(format!("{path}.url"), e.to_string()))
}

impl RedisStore {
    /// A store for `config`; connects lazily, so a Redis that is down at start only degrades.
    pub fn new(config: &RateLimitStoreConfig) -> Result<RedisStore, ConfigError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(MAX_BACKOFF);
        let connection = ConnectionManager::new_lazy_with_config(client(config)?, manager)
            .map_err(|e| ConfigError::new("rate_limit_store.url", e.to_string()))?;
        Ok(RedisStore {
            connection,
            reserve: Script::new(include_str!("reserve.lua")),
            pause: Script::new(include_str!("pause.lua")),
            paused: Script::new(include_str!("paused.lua")),
            prefix: config.key_prefix.clone(),
            timeout,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            sequence: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            started: Instant::now(),
            degraded_decisions: Counter::default(),
        })
    }

    /// `"ok"` or `"degraded"`, for `/readyz`.
    pub fn health(&self) -> &'static str {
        if self.degraded.load(Ordering::Relaxed) {
            "degraded"
        } else {
            "ok"
        }
    }

    /// The keys of (limit, tenant): its reservations and its pause. The braces make both hash
    /// to one Redis Cluster slot, as a script's keys must.
    fn keys(&self, limit: &str, tenant: &str) -> (String, String) {
        let base = format!("{}{{{limit}:{tenant}}}", self.prefix);
        (format!("{base}:reservations"), format!("{base}:paused"))
    }

    /// A name for a new reservation, unique across replicas.
    pub fn member(&self) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.replica)
    }

    /// Reserves the earliest slot of (limit, tenant) within `budget`, no earlier than
    /// `not_before` from now.
    pub async fn reserve(
        &self,
        key: (&str, &str),
        member: &str,
        budget: Duration,
        not_before: Duration,
        limits: (Option<u32>, Option<u32>),
        windows: Windows,
    ) -> Result<(Reserved, Counts), Unavailable> {
        let (reservations, paused) = self.keys(key.0, key.1);
        let mut call = self.reserve.prepare_invoke();
        call.key(reservations)
            .key(paused)
            .arg(member)
            .arg(budget.as_millis() as u64)
            .arg(not_before.as_millis() as u64)
            .arg(limits.0.unwrap_or(0))
            .arg(windows.minute.as_millis() as u64)
            .arg(limits.1.unwrap_or(0))
            .arg(windows.hour.as_millis() as u64);
        let mut conn = self.connection.clone();
        let (reserved, wait_ms, minute, hour, queued): (u8, u64, u32, u32, u32) =
            self.call(call.invoke_async(&mut conn)).await?;
        let wait = Duration::from_millis(wait_ms);
        let reserved = if reserved == 1 {
            Reserved::After(wait)
        } else {
            Reserved::Refused(wait)
        };
        let counts = Counts {
            minute,
            hour,
            queued,
        };
        Ok((reserved, counts))
    }

    /// Gives a reservation back (the request was cancelled or must queue again).
    pub async fn release(&self, key: (&str, &str), member: &str) {
        let (reservations, _) = self.keys(key.0, key.1);
        let mut conn = self.connection.clone();
        let cmd = redis::cmd("ZREM").arg(reservations).arg(member).clone();
        let _ = self.call(cmd.query_async::<i64>(&mut conn)).await;
    }

    /// Pauses (limit, tenant) on every replica for `wait` from now (Redis clock).
    pub async fn pause(&self, key: (&str, &str), wait: Duration) {
        let (_, paused) = self.keys(key.0, key.1);
        let mut call = self.pause.prepare_invoke();
        call.key(paused).arg(wait.as_millis().max(1) as u64);
        let mut conn = self.connection.clone();
        let _ = self.call(call.invoke_async::<u64>(&mut conn)).await;
    }

    /// How long (limit, tenant) is still paused.
    pub async fn paused_for(&self, key: (&str, &str)) -> Result<Duration, Unavailable> {
        let (_, paused) = self.keys(key.0, key.1);
        let mut call = self.paused.prepare_invoke();
        call.key(paused);
        let mut conn = self.connection.clone();
        let ms: u64 = self.call(call.invoke_async(&mut conn)).await?;
        Ok(Duration::from_millis(ms))
    }

    /// Runs one Redis call within `timeout_ms`, keeping track of the store's health. While
    /// degraded, only one call per backoff interval is let through.
    async fn call<T>(
        &self,
        request: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        if !self.due() {
            return Err(Unavailable);
        }
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(value)) => {
                self.recovered();
                Ok(value)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.failed(&format!("no answer within {} ms", self.timeout.as_millis()));
                Err(Unavailable)
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether a call may go to Redis now: always when healthy; when degraded, once per backoff.
    fn due(&self) -> bool {
        if !self.degraded.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let at = self.retry_at_ms.load(Ordering::Relaxed);
        let backoff = self.backoff_ms.load(Ordering::Relaxed);
        now >= at
            && self
                .retry_at_ms
                .compare_exchange(at, now + backoff, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    fn failed(&self, reason: &str) {
        let backoff = (self.backoff_ms.load(Ordering::Relaxed) * 2).clamp(
            MIN_BACKOFF.as_millis() as u64,
            MAX_BACKOFF.as_millis() as u64,
        );
        self.backoff_ms.store(backoff, Ordering::Relaxed);
        self.retry_at_ms
            .store(self.now_ms() + backoff, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                %reason,
                "rate_limit_store: Redis unavailable; limiting locally with each limit divided by replicas_hint until it is back"
            );
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            self.backoff_ms.store(0, Ordering::Relaxed);
            tracing::info!("rate_limit_store: Redis is back; limits are shared again");
        }
    }

    /// While degraded, asks Redis (`PING`) once per backoff interval, so the store returns to
    /// shared limits even when no request comes; stops at `cancel`.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(MIN_BACKOFF) => {}
            }
            if self.degraded.load(Ordering::Relaxed) {
                let mut conn = self.connection.clone();
                let ping = redis::cmd("PING");
                let _ = self.call(ping.query_async::<String>(&mut conn)).await;
            }
        }
    }

    /// Connects once and runs `PING` (for `check --live`): `Ok` or a readable reason.
    pub async fn ping(config: &RateLimitStoreConfig) -> Result<(), String> {
        let client = client(config).map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(config.timeout_ms).max(Duration::from_secs(2));
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    /// This replica's clock minus Redis's, for the log at start (decisions never use it).
    pub async fn clock_skew(&self, offset_ms: i64) -> Result<i64, Unavailable> {
        let mut conn = self.connection.clone();
        let (secs, micros): (u64, u64) =
            self.call(redis::cmd("TIME").query_async(&mut conn)).await?;
        let redis_ms = secs * 1000 + micros / 1000;
        let local_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
            + offset_ms;
        Ok(local_ms - redis_ms as i64)
    }
}

/// A Redis error as a user should read it: wrong password, untrusted certificate, refused.
fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("wrongpass") || lower.contains("authentication failed") {
        "authentication failed: wrong user or password"
    } else if lower.contains("noauth") {
        "authentication required: set rate_limit_store.password or password_file"
    } else if lower.contains("certificate") || lower.contains("unknownissuer") {
        "TLS: the server's certificate is not trusted (unknown CA?)"
    } else if lower.contains("refused") {
        "connection refused"
    } else {
        return text;
    };
    format!("{hint} ({text})")
}

/// Gives a shared reservation back unless the request was sent (a cancelled request's `Drop`
/// cannot wait, so the `ZREM` runs as its own task).
struct SharedReservation {
    store: Arc<RedisStore>,
    key: (Arc<str>, Arc<str>),
    member: String,
    armed: bool,
}

impl Drop for SharedReservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (store, key, member) = (
                self.store.clone(),
                self.key.clone(),
                std::mem::take(&mut self.member),
            );
            handle.spawn(async move { store.release((&key.0, &key.1), &member).await });
        }
    }
}

impl Limiter {
    /// `acquire_within` through the shared store: `Err(Unavailable)` when Redis could not be asked,
    /// and the caller decides locally instead.
    pub(super) async fn acquire_shared(
        &self,
        store: &Arc<RedisStore>,
        spec: &LimitSpec,
        tenant: &Arc<str>,
        budget: Duration,
    ) -> Result<Result<Admission, Refused>, Unavailable> {
        let key = (&*spec.name, &**tenant);
        let limits = (spec.per_minute, spec.per_hour);
        let arrived = Instant::now();
        let mut first = true;
        loop {
            let left = budget.saturating_sub(arrived.elapsed());
            let not_before = self.local_pause(&spec.name, tenant);
            let member = store.member();
            let (reserved, counts) = store
                .reserve(key, &member, left, not_before, limits, self.windows)
                .await?;
            self.saw_shared(spec, tenant, counts, reserved);
            let wait = match reserved {
                Reserved::Refused(retry_after) => {
                    spec.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Err(Refused { retry_after }));
                }
                Reserved::After(wait) => wait,
            };
            if wait.is_zero() && first {
                spec.stats.admitted.fetch_add(1, Ordering::Relaxed);
                return Ok(Ok(Admission {
                    waited: Duration::ZERO,
                }));
            }
            first = false;
            let mut reservation = SharedReservation {
                store: store.clone(),
                key: (spec.name.clone(), tenant.clone()),
                member,
                armed: true,
            };
            tokio::time::sleep(wait).await;
            // A pause set (by any replica) while we slept holds us back again; if Redis cannot
            // say, the reservation stands.
            let paused = !wait.is_zero()
                && (store.paused_for(key).await.is_ok_and(|p| !p.is_zero())
                    || !self.local_pause(&spec.name, tenant).is_zero());
            if paused {
                continue;
            }
            reservation.armed = false;
            let waited = arrived.elapsed();
            spec.stats.queued.fetch_add(1, Ordering::Relaxed);
            spec.stats.wait.observe(waited.as_secs_f64());
            return Ok(Ok(Admission { waited }));
        }
    }

    /// Tells every replica about a pause (without holding up the response that brought it).
    pub(super) fn share_pause(
        &self,
        store: &Arc<RedisStore>,
        spec: &LimitSpec,
        tenant: &Arc<str>,
        until: Instant,
    ) {
        let wait = until.saturating_duration_since(Instant::now());
        let (store, name, tenant) = (store.clone(), spec.name.clone(), tenant.clone());
        tokio::spawn(async move { store.pause((&name, &tenant), wait).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RateLimitConfig, StoreType};

    /// A store whose Redis refuses connections (nothing listens on port 1).
    fn unreachable() -> Arc<RedisStore> {
        let config = RateLimitStoreConfig {
            kind: StoreType::Redis,
            url: Some("redis://127.0.0.1:1".into()),
            timeout_ms: 500,
            ..RateLimitStoreConfig::default()
        };
        Arc::new(RedisStore::new(&config).unwrap())
    }

    #[tokio::test]
    async fn without_redis_each_replica_keeps_its_share_and_counts_the_decisions() {
        let store = unreachable();
        let limiter = Limiter::with_store(100, Windows::default(), Some((store.clone(), 3)));
        let spec = limiter.spec(
            "mde",
            &RateLimitConfig {
                per_minute: Some(10),
                per_hour: None,
                max_wait_secs: Some(0),
            },
        );
        let tenant: Arc<str> = "t".into();
        for i in 0..3 {
            assert!(limiter.acquire(&spec, &tenant).await.is_ok(), "request {i}");
        }
        let refused = limiter.acquire(&spec, &tenant).await.unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(50));
        assert_eq!(limiter.store_health(), "degraded");
        assert_eq!(store.degraded_decisions.get(), 4);
    }

    #[tokio::test]
    async fn a_degraded_store_tries_redis_once_per_backoff() {
        let store = unreachable();
        assert!(store.paused_for(("mde", "t")).await.is_err());
        assert_eq!(store.health(), "degraded");
        assert!(!store.due(), "tried again before the backoff");
        tokio::time::sleep(MIN_BACKOFF + Duration::from_millis(50)).await;
        assert!(store.due());
        assert!(!store.due(), "only one call goes through per interval");
    }
}
