//! Per (app, tenant, API family) rolling windows of a minute and an hour, as the Defender APIs
//! document their quotas: Defender XDR incidents 50 a minute and 1500 an hour
//! (<https://learn.microsoft.com/defender-xdr/api-list-incidents>), MDE machines and alerts
//! 100 and 1500 (<https://learn.microsoft.com/defender-endpoint/api/get-machines>), advanced
//! hunting 45 a minute (<https://learn.microsoft.com/defender-xdr/api-advanced-hunting>), MDE
//! advanced queries 45 and 1500 (<https://learn.microsoft.com/defender-endpoint/api/run-advanced-query-api>),
//! Graph security 150 a minute (<https://learn.microsoft.com/graph/throttling-limits#security-api-limits>).

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
    /// Defender XDR advanced hunting.
    Hunting,
    /// MDE advanced queries.
    MdeHunting,
    /// MDE machines and alerts.
    Mde,
    Graph,
}

/// A family's budget: calls per window of a minute and of an hour (0: no hourly limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Quota {
    pub per_minute: u32,
    pub per_hour: u32,
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
        } else if under("/api/advancedhunting") {
            Some(Family::Hunting)
        } else if under("/api/advancedqueries") {
            Some(Family::MdeHunting)
        } else if under("/api/machines") || under("/api/alerts") {
            Some(Family::Mde)
        } else {
            None
        }
    }

    pub fn quota(self, opts: &SandboxOptions) -> Quota {
        let (per_minute, per_hour) = match self {
            Family::Incidents => (opts.incidents_per_minute, opts.incidents_per_hour),
            Family::Hunting => (opts.hunting_per_minute, 0),
            Family::MdeHunting => (opts.hunting_per_minute, opts.mde_hunting_per_hour),
            Family::Mde => (opts.mde_per_minute, opts.mde_per_hour),
            Family::Graph => (opts.graph_per_minute, 0),
        };
        Quota {
            per_minute,
            per_hour,
        }
    }
}

/// Whose budget a request spends: the app (client ID), the tenant and the API family.
type Key = (String, String, Family);

/// Admission times per key within the last hour window, oldest first.
#[derive(Default)]
pub(super) struct RateLimiter {
    windows: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Admits one request of `app` in `tenant`, or says how long until both windows have
    /// room: `minute` is the short window, and the hour window is sixty of them.
    pub fn admit(
        &self,
        (app, tenant): (&str, &str),
        family: Family,
        quota: Quota,
        minute: Duration,
    ) -> Result<(), Duration> {
        let hour = minute * 60;
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        let key = (
            app.to_ascii_lowercase(),
            tenant.to_ascii_lowercase(),
            family,
        );
        let hits = windows.entry(key).or_default();
        while hits.front().is_some_and(|t| now.duration_since(*t) >= hour) {
            hits.pop_front();
        }
        let waits = [
            wait_for_room(hits, quota.per_minute, minute, now),
            (quota.per_hour > 0)
                .then(|| wait_for_room(hits, quota.per_hour, hour, now))
                .flatten(),
        ];
        match waits.into_iter().flatten().max() {
            Some(wait) => Err(wait),
            None => {
                hits.push_back(now);
                Ok(())
            }
        }
    }
}

/// How long until fewer than `limit` of `hits` (oldest first) are within `window` of `now`;
/// `None` when there is room already.
fn wait_for_room(
    hits: &VecDeque<Instant>,
    limit: u32,
    window: Duration,
    now: Instant,
) -> Option<Duration> {
    let inside = hits
        .iter()
        .rev()
        .take_while(|t| now.duration_since(**t) < window)
        .count();
    let limit = limit as usize;
    if inside < limit {
        return None;
    }
    // The admission that must leave the window before there is room for one more.
    let leaving = hits[hits.len() - inside + (inside - limit)];
    Some(window.saturating_sub(now.duration_since(leaving)))
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
            Some(Family::MdeHunting)
        );
        assert_eq!(
            Family::of("/api/advancedhunting/run"),
            Some(Family::Hunting)
        );
        assert_eq!(Family::of("/api/machines"), Some(Family::Mde));
        assert_eq!(Family::of("/v1.0/security/incidents"), Some(Family::Graph));
        assert_eq!(Family::of("/api/_test/echo"), None);
        assert_eq!(Family::of("/api/incidentsx"), None);
    }

    const THREE_A_MINUTE: Quota = Quota {
        per_minute: 3,
        per_hour: 0,
    };

    #[tokio::test]
    async fn limit_is_per_app_tenant_and_family() {
        let limiter = RateLimiter::default();
        let minute = Duration::from_secs(60);
        for _ in 0..3 {
            assert!(
                limiter
                    .admit(("app", "a"), Family::Mde, THREE_A_MINUTE, minute)
                    .is_ok()
            );
        }
        let wait = limiter
            .admit(("app", "a"), Family::Mde, THREE_A_MINUTE, minute)
            .expect_err("fourth is refused");
        assert!(wait > Duration::from_secs(59) && wait <= minute);
        assert!(
            limiter
                .admit(("app", "b"), Family::Mde, THREE_A_MINUTE, minute)
                .is_ok()
        );
        assert!(
            limiter
                .admit(("app", "a"), Family::Graph, THREE_A_MINUTE, minute)
                .is_ok()
        );
        assert!(
            limiter
                .admit(("other", "a"), Family::Mde, THREE_A_MINUTE, minute)
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_hourly_quota_holds_after_the_minute_has_room() {
        let limiter = RateLimiter::default();
        let minute = Duration::from_secs(60);
        let quota = Quota {
            per_minute: 2,
            per_hour: 3,
        };
        for _ in 0..2 {
            assert!(
                limiter
                    .admit(("app", "t"), Family::Incidents, quota, minute)
                    .is_ok()
            );
        }
        tokio::time::advance(minute).await;
        assert!(
            limiter
                .admit(("app", "t"), Family::Incidents, quota, minute)
                .is_ok()
        );
        tokio::time::advance(minute).await;
        let wait = limiter
            .admit(("app", "t"), Family::Incidents, quota, minute)
            .expect_err("the fourth in an hour is refused");
        assert_eq!(
            wait,
            minute * 58,
            "until the first admission is an hour old"
        );
        tokio::time::advance(wait).await;
        assert!(
            limiter
                .admit(("app", "t"), Family::Incidents, quota, minute)
                .is_ok()
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }
}
