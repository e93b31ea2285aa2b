//! Per (tenant, API family) sliding-window limits, as the Defender APIs document them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::SandboxOptions;
use super::state::lock;

/// API families with separate documented limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Family {
    Incidents,
    Hunting,
    /// MDE machines and alerts.
    Mde,
    Graph,
}

impl Family {
    /// The family a request path belongs to; `None` for unlimited paths (test helpers).
    pub fn of(path: &str) -> Option<Family> {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/v1.0") {
            Some(Family::Graph)
        } else if under("/api/incidents") {
            Some(Family::Incidents)
        } else if under("/api/advancedhunting") || under("/api/advancedqueries") {
            Some(Family::Hunting)
        } else if under("/api/machines") || under("/api/alerts") {
            Some(Family::Mde)
        } else {
            None
        }
    }

    pub fn limit(self, opts: &SandboxOptions) -> u32 {
        match self {
            Family::Incidents => opts.incidents_per_minute,
            Family::Hunting => opts.hunting_per_minute,
            Family::Mde => opts.mde_per_minute,
            Family::Graph => opts.graph_per_minute,
        }
    }
}

/// Admission times per (tenant, family) within the current window.
#[derive(Default)]
pub(super) struct RateLimiter {
    windows: Mutex<HashMap<(String, Family), VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Admits one request, or says how long until the oldest admission leaves the window.
    pub fn admit(
        &self,
        tenant: &str,
        family: Family,
        limit: u32,
        window: Duration,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        let hits = windows.entry((tenant.to_owned(), family)).or_default();
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            hits.pop_front();
        }
        if hits.len() < limit as usize {
            hits.push_back(now);
            return Ok(());
        }
        let waited = hits
            .front()
            .map_or(Duration::ZERO, |t| now.duration_since(*t));
        Err(window.saturating_sub(waited))
    }
}

/// Whole seconds to announce in `Retry-After`: rounded up, at least 1.
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_families() {
        assert_eq!(Family::of("/api/incidents"), Some(Family::Incidents));
        assert_eq!(Family::of("/api/incidents/12"), Some(Family::Incidents));
        assert_eq!(
            Family::of("/api/advancedqueries/run"),
            Some(Family::Hunting)
        );
        assert_eq!(Family::of("/api/machines"), Some(Family::Mde));
        assert_eq!(Family::of("/v1.0/security/incidents"), Some(Family::Graph));
        assert_eq!(Family::of("/api/_test/echo"), None);
        assert_eq!(Family::of("/api/incidentsx"), None);
    }

    #[tokio::test]
    async fn limit_is_per_tenant_and_family() {
        let limiter = RateLimiter::default();
        let minute = Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.admit("a", Family::Mde, 3, minute).is_ok());
        }
        let wait = limiter
            .admit("a", Family::Mde, 3, minute)
            .expect_err("fourth is refused");
        assert!(wait > Duration::from_secs(59) && wait <= minute);
        assert!(limiter.admit("b", Family::Mde, 3, minute).is_ok());
        assert!(limiter.admit("a", Family::Graph, 3, minute).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }
}
