//! Tests of the limiter with a paused clock.

use super::*;
use crate::config::RateLimitConfig;

fn spec(
    limiter: &Limiter,
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    max_wait_secs: u64,
) -> LimitSpec {
    limiter.spec(
        "incidents",
        &RateLimitConfig {
            per_minute,
            per_hour,
            max_wait_secs: Some(max_wait_secs),
        },
    )
}

fn t(name: &str) -> Arc<str> {
    name.into()
}

async fn admit_now(l: &Limiter, s: &LimitSpec, tenant: &Arc<str>) -> bool {
    let started = Instant::now();
    l.acquire(s, tenant).await.is_ok() && Instant::now() == started
}

#[tokio::test(start_paused = true)]
async fn admission_counts_are_exact_per_minute_window() {
    let l = Limiter::new(100);
    let s = spec(&l, Some(5), None, 0);
    let a = t("a");
    for i in 0..5 {
        assert!(admit_now(&l, &s, &a).await, "request {i}");
    }
    let refused = l.acquire(&s, &a).await.unwrap_err();
    assert!(
        refused.retry_after >= Duration::from_secs(60),
        "{refused:?}"
    );
    assert!(
        refused.retry_after <= Duration::from_millis(61_000),
        "{refused:?}"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        l.acquire(&s, &a).await.is_err(),
        "still inside the rolling minute"
    );
    tokio::time::advance(refused.retry_after - Duration::from_secs(30)).await;
    assert!(
        admit_now(&l, &s, &a).await,
        "a truthful Retry-After: admitted right then"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rolling_window_never_admits_more_than_the_limit_in_any_span() {
    let l = Limiter::new(100);
    let s = spec(&l, Some(10), None, 120);
    let a = t("a");
    let mut sent = Vec::new();
    for _ in 0..40 {
        l.acquire(&s, &a).await.unwrap();
        sent.push(Instant::now());
        tokio::time::advance(Duration::from_millis(700)).await;
    }
    for (i, start) in sent.iter().enumerate() {
        let in_window = sent[i..]
            .iter()
            .filter(|t| **t - *start < Duration::from_secs(60))
            .count();
        assert!(in_window <= 10, "{in_window} within 60 s of request {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn per_hour_and_per_minute_both_hold() {
    let l = Limiter::new(100);
    let s = spec(&l, Some(3), Some(5), 0);
    let a = t("a");
    for _ in 0..3 {
        assert!(admit_now(&l, &s, &a).await);
    }
    assert!(l.acquire(&s, &a).await.is_err());
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(admit_now(&l, &s, &a).await);
    assert!(admit_now(&l, &s, &a).await);
    let refused = l.acquire(&s, &a).await.unwrap_err();
    assert!(
        refused.retry_after > Duration::from_secs(3000),
        "the hour is spent: {refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_requests_are_admitted_in_arrival_order() {
    let l = Arc::new(Limiter::new(100));
    let s = spec(&l, Some(2), None, 300);
    let a = t("a");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (l, s, a, order) = (l.clone(), s.clone(), a.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            l.acquire(&s, &a).await.unwrap();
            order.lock().unwrap().push(i);
        }));
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(s.stats.admitted.load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.queued.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn a_wait_beyond_max_wait_is_refused_without_reserving() {
    let l = Limiter::new(100);
    let s = spec(&l, Some(1), None, 10);
    let a = t("a");
    assert!(admit_now(&l, &s, &a).await);
    for _ in 0..3 {
        assert!(l.acquire(&s, &a).await.is_err());
    }
    assert_eq!(s.stats.refused.load(Ordering::Relaxed), 3);
    tokio::time::advance(Duration::from_millis(61_000)).await;
    assert!(
        admit_now(&l, &s, &a).await,
        "the refused requests left no reservation behind"
    );
}

#[tokio::test(start_paused = true)]
async fn tenants_have_their_own_budgets() {
    let l = Limiter::new(100);
    let s = spec(&l, Some(1), None, 0);
    assert!(admit_now(&l, &s, &t("a")).await);
    assert!(l.acquire(&s, &t("a")).await.is_err());
    assert!(admit_now(&l, &s, &t("b")).await);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_pause_holds_the_next_call_or_refuses_it() {
    let l = Limiter::new(100);
    let waits = spec(&l, Some(100), None, 30);
    let a = t("a");
    l.pause(&waits, &a, Instant::now() + Duration::from_secs(7));
    let started = Instant::now();
    let admission = l.acquire(&waits, &a).await.unwrap();
    assert!(Instant::now() - started >= Duration::from_secs(7));
    assert!(admission.waited >= Duration::from_secs(7));
    let l = Limiter::new(100);
    let impatient = spec(&l, Some(100), None, 5);
    l.pause(&impatient, &a, Instant::now() + Duration::from_secs(7));
    let refused = l.acquire(&impatient, &a).await.unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn a_pause_arriving_while_queued_holds_the_queued_request_too() {
    let l = Arc::new(Limiter::new(100));
    let s = spec(&l, Some(1), None, 120);
    let a = t("a");
    assert!(admit_now(&l, &s, &a).await);
    let (l2, s2, a2) = (l.clone(), s.clone(), a.clone());
    let queued = tokio::spawn(async move {
        let started = Instant::now();
        l2.acquire(&s2, &a2).await.unwrap();
        Instant::now() - started
    });
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    l.pause(&s, &a, Instant::now() + Duration::from_secs(90));
    let waited = queued.await.unwrap();
    assert!(waited >= Duration::from_secs(91), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_goes_away_gives_its_place_back() {
    let l = Arc::new(Limiter::new(100));
    let s = spec(&l, Some(1), None, 120);
    let a = t("a");
    assert!(admit_now(&l, &s, &a).await);
    let (l2, s2, a2) = (l.clone(), s.clone(), a.clone());
    let gone = tokio::spawn(async move { l2.acquire(&s2, &a2).await });
    tokio::time::advance(Duration::from_secs(1)).await;
    gone.abort();
    let _ = gone.await;
    let started = Instant::now();
    l.acquire(&s, &a).await.unwrap();
    let waited = Instant::now() - started;
    assert!(
        waited < Duration::from_secs(61),
        "took the freed place: {waited:?}"
    );
    let third = l.acquire(&s, &a);
    let refused = tokio::time::timeout(Duration::from_secs(200), third)
        .await
        .unwrap();
    assert!(refused.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_changed_limit_takes_effect() {
    let l = Limiter::new(100);
    let a = t("a");
    let strict = spec(&l, Some(1), None, 0);
    assert!(admit_now(&l, &strict, &a).await);
    assert!(l.acquire(&strict, &a).await.is_err());
    let relaxed = spec(&l, Some(10), None, 0);
    assert!(admit_now(&l, &relaxed, &a).await);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_tenants_stay_bounded() {
    let l = Limiter::new(5_000);
    let s = spec(&l, Some(50), Some(1500), 0);
    for i in 0..10_000 {
        let tenant: Arc<str> = format!("tenant-{i}").into();
        l.acquire(&s, &tenant).await.unwrap();
    }
    assert!(l.buckets() <= 5_000, "{}", l.buckets());
}

#[test]
fn retry_times_are_read_from_headers_and_bodies() {
    let mut h = http::HeaderMap::new();
    let none: Option<&[u8]> = None;
    h.insert("retry-after", "7".parse().unwrap());
    assert_eq!(retry_after_from(&h, none), Some(Duration::from_secs(7)));
    h.insert("retry-after", "1.5".parse().unwrap());
    assert_eq!(
        retry_after_from(&h, none),
        Some(Duration::from_millis(1500))
    );
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
    h.insert("retry-after", date.parse().unwrap());
    let d = retry_after_from(&h, none).unwrap();
    assert!(
        d > Duration::from_secs(17) && d <= Duration::from_secs(20),
        "{d:?}"
    );
    let empty = http::HeaderMap::new();
    let body = br#"{"error":{"code":"TooManyRequests","message":"Rate limit is exceeded. Try again in 12 seconds."}}"#;
    assert_eq!(
        retry_after_from(&empty, Some(body)),
        Some(Duration::from_secs(12))
    );
    assert_eq!(
        retry_after_from(&empty, Some(br#"{"retryAfterSeconds": 5}"#)),
        Some(Duration::from_secs(5))
    );
    assert_eq!(retry_after_from(&empty, Some(b"nothing here")), None);
    assert_eq!(retry_after_from(&empty, none), None);
}

#[tokio::test(start_paused = true)]
async fn stats_render_as_prometheus_text() {
    let l = Limiter::new(100);
    let s = spec(&l, Some(1), None, 0);
    let a = t("a");
    let _ = l.acquire(&s, &a).await;
    let _ = l.acquire(&s, &a).await;
    l.pause(&s, &a, Instant::now());
    let mut registry = prometheus_client::registry::Registry::default();
    l.register(&mut registry);
    let out = crate::telemetry::render(&registry);
    for needle in [
        "defender_proxy_ratelimit_admitted_total{limit=\"incidents\"} 1",
        "defender_proxy_ratelimit_refused_total{limit=\"incidents\"} 1",
        "defender_proxy_ratelimit_upstream_throttled_total{limit=\"incidents\"} 1",
        "# TYPE defender_proxy_ratelimit_wait_seconds histogram",
    ] {
        assert!(out.contains(needle), "{needle} in\n{out}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_under_the_old_config_does_not_set_the_old_numbers_back() {
    let l = Limiter::new(100);
    let a = t("a");
    let old = spec(&l, Some(1), None, 0);
    let new = spec(&l, Some(3), None, 0);
    for _ in 0..3 {
        assert!(admit_now(&l, &new, &a).await);
    }
    // A request that started before the reload still holds the old spec: it neither resets
    // the bucket (which would forget the three admissions) nor gets past the new numbers.
    assert!(l.acquire(&old, &a).await.is_err());
    assert!(
        l.acquire(&new, &a).await.is_err(),
        "still three in this minute"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reservation_from_before_a_limit_change_gives_nothing_back_to_the_new_windows() {
    let l = Arc::new(Limiter::new(100));
    let a = t("a");
    // Old numbers: one an hour (30 s slots), so a second request queues for slot 122.
    let old = spec(&l, None, Some(1), 4000);
    assert!(admit_now(&l, &old, &a).await);
    let (l2, o2, a2) = (l.clone(), old.clone(), a.clone());
    let queued = tokio::spawn(async move { l2.acquire(&o2, &a2).await });
    tokio::time::advance(Duration::from_secs(1)).await;
    // New numbers: two a minute (0.5 s slots). 61.1 s on, both go into the new slot 122...
    let new = spec(&l, Some(2), None, 0);
    assert!(l.acquire(&new, &a).await.is_ok());
    tokio::time::advance(Duration::from_millis(61_100)).await;
    assert!(l.acquire(&new, &a).await.is_ok());
    assert!(admit_now(&l, &new, &a).await);
    // ...and the old waiter, still asleep, goes away: its slot 122 is not the new slot 122.
    queued.abort();
    let _ = queued.await;
    assert!(l.acquire(&new, &a).await.is_err(), "two is the limit");
}
