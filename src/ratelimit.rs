//! Request budgets per (limit, tenant) that keep clients inside Defender's published quotas.
//!
//! Each `[rate_limit.NAME]` has rolling per-minute and per-hour windows. A request reserves the
//! earliest time it may be sent, never earlier than the request before it (so the queue is
//! FIFO), and sleeps until then; if that is further off than `max_wait_secs`, it reserves
//! nothing and is refused at once with the true time to wait. A client that goes away gives its
//! place back. An upstream 429/503 with a retry time pauses the bucket until then.
//!
//! Windows are split into 120 slots (0.5 s for a minute, 30 s for an hour) kept sparsely, so a
//! bucket's memory is bounded whatever the traffic. An admission counts until the end of its
//! slot plus the window plus one more slot: a request reaches the upstream a little after it
//! is admitted (its token is fetched, a connection taken), and the upstream counts its arrival.
//! So the limiter is conservative by one to two slots (0.5 to 1 s of a minute), never over the
//! limit as the upstream counts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::RateLimitConfig;
use crate::telemetry::latency_histogram;

mod bucket;
mod shared;
use bucket::{Bucket, Reservation, Window, lock};
pub use shared::{Counts, RedisStore, Reserved, Unavailable, Windows};

/// Slots a window is split into.
const SLOTS: u64 = 120;
/// Slots an admission counts for after its own: the window, and one slot of allowance for the
/// time between admission and arrival upstream.
const HOLD_SLOTS: u64 = SLOTS + 1;

/// Counters of one limit.
#[derive(Debug)]
pub struct LimitStats {
    /// Sent at once.
    pub admitted: AtomicU64,
    /// Sent after waiting in the queue.
    pub queued: AtomicU64,
    /// Refused with 429.
    pub refused: AtomicU64,
    /// Upstream 429/503 answers that paused the bucket.
    pub upstream_throttled: AtomicU64,
    /// Of those, the ones absorbed: waited out and retried, unseen by the client.
    pub absorbed: AtomicU64,
    /// Of those, the ones passed on to the client.
    pub passed_through: AtomicU64,
    /// Time spent queued.
    pub wait: Histogram,
}

impl LimitStats {
    /// Counters at zero, with `wait` for the time spent queued.
    fn new(wait: Histogram) -> Self {
        LimitStats {
            admitted: AtomicU64::default(),
            queued: AtomicU64::default(),
            refused: AtomicU64::default(),
            upstream_throttled: AtomicU64::default(),
            absorbed: AtomicU64::default(),
            passed_through: AtomicU64::default(),
            wait,
        }
    }
}

/// A family keyed by the limit's name.
type ByLimit<M, C = fn() -> M> = Family<[(&'static str, String); 1], M, C>;

/// A configured limit.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    /// Its name in `proxy.toml`.
    pub name: Arc<str>,
    /// Requests per rolling minute.
    pub per_minute: Option<u32>,
    /// Requests per rolling hour.
    pub per_hour: Option<u32>,
    /// Longest wait before refusing.
    pub max_wait: Duration,
    /// Counters, shared across reloads.
    pub stats: Arc<LimitStats>,
    /// Larger for a spec from a later config: a request that started under an older config
    /// never sets a bucket back to the old numbers.
    pub generation: u64,
    /// With a shared store: this replica's share (limits divided by `replicas_hint`), used
    /// locally while the store is unavailable.
    pub fallback: Option<Arc<LimitSpec>>,
}

/// The request may be sent.
#[derive(Debug)]
pub struct Admission {
    /// Time spent queued.
    pub waited: Duration,
}

/// The request must not be sent; it could be in `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Time until a slot frees.
    pub retry_after: Duration,
}

type Key = (Arc<str>, Arc<str>);

/// A counter family: name, help text, and which counter of a limit it shows.
type CounterOf = (&'static str, &'static str, fn(&LimitStats) -> &AtomicU64);

/// All buckets, and the counters of every limit seen.
pub struct Limiter {
    buckets: moka::sync::Cache<Key, Arc<Mutex<Bucket>>>,
    /// With a shared store: each (limit, tenant) budget as this replica's last reservation
    /// found it, for the remaining-budget headers and `/ratelimits`.
    views: moka::sync::Cache<Key, budget::SharedView>,
    stats: Mutex<HashMap<Arc<str>, Arc<LimitStats>>>,
    /// The queue-time histograms of the limits, shared with their `LimitStats`.
    waits: ByLimit<Histogram>,
    generations: AtomicU64,
    /// The window spans.
    windows: Windows,
    /// The shared store and the replicas it is shared by, when `type = "redis"`.
    store: Option<(Arc<RedisStore>, u32)>,
}

impl Limiter {
    /// At most `capacity` (limit, tenant) buckets; an idle one is dropped after an hour and a bit.
    pub fn new(capacity: u64) -> Self {
        Limiter::with_store(capacity, Windows::default(), None)
    }

    /// Like `new`, with window spans `windows` and, when given, a store shared by `replicas`
    /// replicas (the local buckets then only hold each replica's share, for when the store is
    /// unavailable).
    pub fn with_store(
        capacity: u64,
        windows: Windows,
        store: Option<(Arc<RedisStore>, u32)>,
    ) -> Self {
        let buckets = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(windows.hour + Duration::from_secs(120))
            .build();
        let views = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(windows.hour)
            .build();
        Limiter {
            buckets,
            views,
            stats: Mutex::default(),
            waits: Family::new_with_constructor(latency_histogram),
            generations: AtomicU64::new(0),
            windows,
            store,
        }
    }

    /// The spans of the windows (a minute and an hour, except in tests).
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// The shared store, if any.
    pub fn store(&self) -> Option<&Arc<RedisStore>> {
        self.store.as_ref().map(|(s, _)| s)
    }

    /// `"local"`, or the shared store's health: `"ok"` or `"degraded"`.
    pub fn store_health(&self) -> &'static str {
        self.store.as_ref().map_or("local", |(s, _)| s.health())
    }

    /// The spec of `[rate_limit.NAME]`, with counters that survive reloads.
    pub fn spec(&self, name: &str, c: &RateLimitConfig) -> LimitSpec {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let stats = stats
            .entry(name.into())
            .or_insert_with(|| {
                let wait = self
                    .waits
                    .get_or_create_owned(&[("limit", name.to_string())]);
                Arc::new(LimitStats::new(wait))
            })
            .clone();
        let spec = LimitSpec {
            name: name.into(),
            per_minute: c.per_minute,
            per_hour: c.per_hour,
            max_wait: Duration::from_secs(c.max_wait_secs()),
            stats,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            fallback: None,
        };
        match &self.store {
            Some((_, replicas)) => {
                let share = |n: Option<u32>| n.map(|n| (n / replicas).max(1));
                let local = LimitSpec {
                    per_minute: share(spec.per_minute),
                    per_hour: share(spec.per_hour),
                    ..spec.clone()
                };
                LimitSpec {
                    fallback: Some(Arc::new(local)),
                    ..spec
                }
            }
            None => spec,
        }
    }

    /// The spec whose numbers the local buckets hold: the replica's share with a shared store.
    fn local_spec<'a>(&self, spec: &'a LimitSpec) -> &'a LimitSpec {
        spec.fallback.as_deref().unwrap_or(spec)
    }

    fn bucket(&self, spec: &LimitSpec, tenant: &Arc<str>) -> Arc<Mutex<Bucket>> {
        let key = (spec.name.clone(), tenant.clone());
        let bucket = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket::new(spec, self.windows, Instant::now())))
        });
        {
            let mut b = lock(&bucket);
            if spec.generation > b.generation {
                if b.limits == (spec.per_minute, spec.per_hour) {
                    b.generation = spec.generation;
                } else {
                    let (paused, rebuilds) = (b.paused_until, b.rebuilds);
                    *b = Bucket::new(spec, self.windows, Instant::now());
                    b.paused_until = paused;
                    b.rebuilds = rebuilds + 1;
                }
            }
        }
        bucket
    }

    /// Waits (FIFO) until the request may be sent, or refuses at once when that would take
    /// longer than `spec.max_wait`.
    pub async fn acquire(&self, spec: &LimitSpec, tenant: &Arc<str>) -> Result<Admission, Refused> {
        self.acquire_within(spec, tenant, spec.max_wait).await
    }

    /// Waits (FIFO) until the request may be sent, or refuses at once when that would take
    /// longer than `budget` (what is left of the request's wait budget). With a shared store
    /// the queue is every replica's; while the store is unavailable, this replica's share of it.
    pub async fn acquire_within(
        &self,
        spec: &LimitSpec,
        tenant: &Arc<str>,
        budget: Duration,
    ) -> Result<Admission, Refused> {
        if let Some((store, _)) = &self.store {
            match self.acquire_shared(store, spec, tenant, budget).await {
                Ok(decided) => return decided,
                Err(Unavailable) => store.degraded_decisions.inc(),
            };
        }
        self.acquire_local(self.local_spec(spec), tenant, budget)
            .await
    }

    /// `acquire_within` on this process's buckets.
    async fn acquire_local(
        &self,
        spec: &LimitSpec,
        tenant: &Arc<str>,
        budget: Duration,
    ) -> Result<Admission, Refused> {
        let bucket = self.bucket(spec, tenant);
        let arrived = Instant::now();
        let mut first = true;
        loop {
            let now = if first { arrived } else { Instant::now() };
            let budget = budget.saturating_sub(now - arrived);
            let (reserved, generation) = {
                let mut b = lock(&bucket);
                (b.reserve(now, budget), b.rebuilds)
            };
            let (at, slots) = match reserved {
                Ok(r) => r,
                Err(refused) => {
                    spec.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(refused);
                }
            };
            if at <= now && first {
                spec.stats.admitted.fetch_add(1, Ordering::Relaxed);
                return Ok(Admission {
                    waited: Duration::ZERO,
                });
            }
            first = false;
            let mut reservation = Reservation {
                bucket: bucket.clone(),
                rebuilds: generation,
                slots,
                armed: true,
            };
            tokio::time::sleep_until(at).await;
            // A pause that arrived while we slept holds us back again.
            let paused = lock(&bucket)
                .paused_until
                .is_some_and(|p| p > Instant::now());
            if paused {
                continue;
            }
            reservation.armed = false;
            let waited = Instant::now() - arrived;
            spec.stats.queued.fetch_add(1, Ordering::Relaxed);
            spec.stats.wait.observe(waited.as_secs_f64());
            return Ok(Admission { waited });
        }
    }

    /// The upstream asked to wait: nothing more is sent for (limit, tenant) before `until`,
    /// by any replica when the store is shared.
    pub fn pause(&self, spec: &LimitSpec, tenant: &Arc<str>, until: Instant) {
        spec.stats
            .upstream_throttled
            .fetch_add(1, Ordering::Relaxed);
        let bucket = self.bucket(self.local_spec(spec), tenant);
        {
            let mut b = lock(&bucket);
            b.paused_until = Some(b.paused_until.map_or(until, |p| p.max(until)));
        }
        if let Some((store, _)) = &self.store {
            self.share_pause(store, spec, tenant, until);
        }
    }

    /// How long this replica knows (limit, tenant) to be paused.
    fn local_pause(&self, limit: &Arc<str>, tenant: &Arc<str>) -> Duration {
        let key = (limit.clone(), tenant.clone());
        self.buckets.get(&key).map_or(Duration::ZERO, |b| {
            lock(&b).paused_until.map_or(Duration::ZERO, |p| {
                p.saturating_duration_since(Instant::now())
            })
        })
    }

    /// Buckets held (for memory checks).
    pub fn buckets(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }

    /// Registers the counters of every limit seen, as they are now, in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let families: [CounterOf; 6] = [
            (
                "defender_proxy_ratelimit_admitted",
                "Requests sent at once",
                |s| &s.admitted,
            ),
            (
                "defender_proxy_ratelimit_queued",
                "Requests sent after queueing",
                |s| &s.queued,
            ),
            (
                "defender_proxy_ratelimit_refused",
                "Requests refused with 429 RateLimited",
                |s| &s.refused,
            ),
            (
                "defender_proxy_ratelimit_upstream_throttled",
                "Upstream 429/503 answers that paused a bucket",
                |s| &s.upstream_throttled,
            ),
            (
                "defender_proxy_ratelimit_absorbed",
                "Upstream 429/503 answers waited out and retried",
                |s| &s.absorbed,
            ),
            (
                "defender_proxy_ratelimit_passed_through",
                "Upstream 429/503 answers passed on to the client",
                |s| &s.passed_through,
            ),
        ];
        for (name, help, field) in families {
            let family = ByLimit::<Counter>::default();
            for (limit, s) in stats.iter() {
                family
                    .get_or_create(&[("limit", limit.to_string())])
                    .inc_by(field(s).load(Ordering::Relaxed));
            }
            registry.register(name, help, family);
        }
        let degraded = Counter::<u64>::default();
        if let Some((store, _)) = &self.store {
            degraded.inc_by(store.degraded_decisions.get());
        }
        registry.register(
            "defender_proxy_ratelimit_store_degraded",
            "Rate-limit decisions taken locally because the shared store was unavailable",
            degraded,
        );
        registry.register(
            "defender_proxy_ratelimit_wait_seconds",
            "Time requests spent queued",
            self.waits.clone(),
        );
    }
}

/// The retry time an upstream 429/503 names: `Retry-After` (seconds, fractional seconds or an
/// HTTP date) or, failing that, the body ("Try again in 5 seconds.", `"retryAfterSeconds": 5`).
pub fn retry_after_from(headers: &http::HeaderMap, body: Option<&[u8]>) -> Option<Duration> {
    if let Some(d) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(crate::token::entra::parse_retry_after)
    {
        return Some(d);
    }
    let text = String::from_utf8_lossy(body?).to_ascii_lowercase();
    for marker in [
        "try again in ",
        "retry after ",
        "\"retryafterseconds\":",
        "\"retry-after\":",
    ] {
        if let Some(i) = text.find(marker) {
            let rest = text[i + marker.len()..].trim_start_matches([' ', '"']);
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if let Ok(secs) = number.parse::<f64>() {
                if secs.is_finite() && secs >= 0.0 {
                    return Some(Duration::from_secs_f64(secs.min(86_400.0)));
                }
            }
        }
    }
    None
}

mod budget;
pub use budget::{Budget, WindowBudget};

#[cfg(test)]
mod tests;
