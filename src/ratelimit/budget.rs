//! What is left of each (limit, tenant) budget, for `/ratelimits` on the admin listener and the
//! remaining-budget headers, so scripts can pace themselves. Read under the bucket's lock;
//! nothing is reserved or changed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Bucket, Counts, HOLD_SLOTS, LimitSpec, Limiter, Reserved, SLOTS, Window, lock};

/// One rolling window of a bucket, now.
#[derive(Debug, Clone, Serialize)]
pub struct WindowBudget {
    /// The window's span: 60 or 3600.
    pub window_secs: u64,
    /// Requests it admits.
    pub limit: u32,
    /// Requests sent within it.
    pub used: u32,
    /// Requests waiting for a later slot of it.
    pub queued: u32,
    /// Requests it would still admit at once.
    pub remaining: u32,
}

/// One (limit, tenant) bucket, now.
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    /// The limit's name.
    pub limit: String,
    /// The tenant's ID.
    pub tenant_id: String,
    /// Its windows.
    pub windows: Vec<WindowBudget>,
    /// Time until a request arriving now would be sent (0 when at once).
    pub next_free_in_secs: f64,
    /// Time the upstream asked the bucket to pause for, if it still is paused.
    pub paused_for_secs: Option<f64>,
    /// Requests waiting in the queue.
    pub queue_length: u32,
    /// With a shared store: how long ago this replica's last reservation read these numbers
    /// from it (they are every replica's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_as_of_secs_ago: Option<f64>,
}

/// A (limit, tenant) budget in the shared store, as a reservation found it.
#[derive(Debug, Clone)]
pub(super) struct SharedView {
    counts: Counts,
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    seen: Instant,
    /// When a request arriving then would have been sent at the earliest.
    next_free: Instant,
}

impl SharedView {
    fn budget(
        &self,
        limit: &str,
        tenant: &str,
        windows: super::Windows,
        paused: Duration,
    ) -> Budget {
        let now = Instant::now();
        let queued = self.counts.queued;
        let window = |span: Duration, limit: u32, used: u32| WindowBudget {
            window_secs: span.as_secs(),
            limit,
            used,
            queued,
            remaining: limit.saturating_sub(used.saturating_add(queued)),
        };
        let windows = [
            self.per_minute
                .map(|l| window(windows.minute, l, self.counts.minute)),
            self.per_hour
                .map(|l| window(windows.hour, l, self.counts.hour)),
        ];
        Budget {
            limit: limit.to_string(),
            tenant_id: tenant.to_string(),
            windows: windows.into_iter().flatten().collect(),
            next_free_in_secs: secs(self.next_free.saturating_duration_since(now).max(paused)),
            paused_for_secs: (!paused.is_zero()).then(|| secs(paused)),
            queue_length: queued,
            shared_as_of_secs_ago: Some(secs(now - self.seen)),
        }
    }
}

impl Window {
    fn budget(&self, epoch: Instant, now: Instant) -> WindowBudget {
        let current = self.slot_of(epoch, now);
        let (mut used, mut queued) = (0u32, 0u32);
        for (s, n) in &self.entries {
            if *s > current {
                queued = queued.saturating_add(*n);
            } else if s + HOLD_SLOTS >= current {
                used = used.saturating_add(*n);
            }
        }
        WindowBudget {
            window_secs: (self.slot * SLOTS as u32).as_secs(),
            limit: self.limit,
            used,
            queued,
            remaining: self.limit.saturating_sub(used.saturating_add(queued)),
        }
    }
}

impl Bucket {
    fn budget(&self, limit: &str, tenant: &str, now: Instant) -> Budget {
        let windows: Vec<WindowBudget> = self
            .windows
            .iter()
            .map(|w| w.budget(self.epoch, now))
            .collect();
        let paused = self.paused_until.filter(|p| *p > now);
        let start = paused.unwrap_or(now);
        let next = self
            .windows
            .iter()
            .map(|w| w.earliest(self.epoch, start))
            .fold(start, Instant::max);
        Budget {
            limit: limit.to_string(),
            tenant_id: tenant.to_string(),
            queue_length: windows.iter().map(|w| w.queued).max().unwrap_or(0),
            windows,
            next_free_in_secs: secs(next - now),
            paused_for_secs: paused.map(|p| secs(p - now)),
            shared_as_of_secs_ago: None,
        }
    }
}

/// Seconds to the millisecond, for JSON.
fn secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

impl Limiter {
    /// Every budget held, by limit then tenant: with a shared store that answers, as this
    /// replica's last reservations found them in it; otherwise this process's buckets (with a
    /// store that does not answer, the replica's share it limits itself to meanwhile).
    pub fn budgets(&self) -> Vec<Budget> {
        let now = Instant::now();
        let mut out: Vec<Budget> = if self.store_health() == "ok" {
            self.views
                .iter()
                .map(|(key, view)| {
                    let paused = self.local_pause(&key.0, &key.1);
                    view.budget(&key.0, &key.1, self.windows, paused)
                })
                .collect()
        } else {
            self.buckets
                .iter()
                .map(|(key, bucket)| lock(&bucket).budget(&key.0, &key.1, now))
                .collect()
        };
        out.sort_by(|a, b| (&a.limit, &a.tenant_id).cmp(&(&b.limit, &b.tenant_id)));
        out
    }

    /// The windows of (limit, tenant) as they are now (see `budgets`); none before its first
    /// request.
    pub fn budget(&self, spec: &LimitSpec, tenant: &Arc<str>) -> Option<Budget> {
        let key = (spec.name.clone(), tenant.clone());
        if self.store_health() == "ok" {
            let view = self.views.get(&key)?;
            let paused = self.local_pause(&spec.name, tenant);
            return Some(view.budget(&spec.name, tenant, self.windows, paused));
        }
        let bucket = self.buckets.get(&key)?;
        let b = lock(&bucket).budget(&spec.name, tenant, Instant::now());
        Some(b)
    }

    /// Records what a reservation in the shared store found.
    pub(super) fn saw_shared(
        &self,
        spec: &LimitSpec,
        tenant: &Arc<str>,
        counts: Counts,
        reserved: Reserved,
    ) {
        let now = Instant::now();
        let (Reserved::After(wait) | Reserved::Refused(wait)) = reserved;
        let view = SharedView {
            counts,
            per_minute: spec.per_minute,
            per_hour: spec.per_hour,
            seen: now,
            next_free: now + wait,
        };
        self.views.insert((spec.name.clone(), tenant.clone()), view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitConfig;

    #[tokio::test(start_paused = true)]
    async fn a_budget_counts_sent_and_queued_requests_and_the_next_free_slot() {
        let limiter = Limiter::new(100);
        let spec = limiter.spec(
            "mde",
            &RateLimitConfig {
                per_minute: Some(2),
                per_hour: Some(10),
                max_wait_secs: Some(120),
            },
        );
        let tenant: Arc<str> = "t".into();
        assert!(limiter.budget(&spec, &tenant).is_none());
        for _ in 0..2 {
            limiter.acquire(&spec, &tenant).await.unwrap();
        }
        let queued = {
            let (limiter, spec, tenant) = (Arc::new(limiter), spec.clone(), tenant.clone());
            let l = limiter.clone();
            let task = tokio::spawn(async move { l.acquire(&spec, &tenant).await.is_ok() });
            tokio::task::yield_now().await;
            (limiter, task)
        };
        let (limiter, task) = queued;
        let b = limiter.budget(&spec, &tenant).unwrap();
        assert_eq!(b.queue_length, 1);
        let minute = &b.windows[0];
        assert_eq!(
            (
                minute.window_secs,
                minute.used,
                minute.queued,
                minute.remaining
            ),
            (60, 2, 1, 0)
        );
        let hour = &b.windows[1];
        assert_eq!((hour.window_secs, hour.used, hour.remaining), (3600, 2, 7));
        assert!(b.next_free_in_secs > 60.0, "{}", b.next_free_in_secs);
        limiter.pause(&spec, &tenant, Instant::now() + Duration::from_secs(5));
        assert_eq!(limiter.budgets()[0].paused_for_secs, Some(5.0));
        assert!(task.await.unwrap());
    }
}
