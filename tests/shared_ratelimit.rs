//! Replicas sharing one quota through Redis: real `redis-server` processes, real proxy
//! processes, one recording upstream. The windows are scaled down (a "minute" of 6 s) with the
//! test-only `DEFENDER_PROXY_TEST_TIME_SCALE`; the code path is the production one.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use common::binary::{Proxy, free_port};
use common::redis_server::{RedisServer, eventually};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};
use tokio::time::Instant;

/// Windows are divided by this: a minute lasts 6 s, an hour 6 min.
const SCALE: u32 = 10;
/// The scaled minute.
const MINUTE: Duration = Duration::from_secs(60 / SCALE as u64);

/// What the upstream saw: when, and the request's query (`r=REPLICA&i=SEQ&t=TENANT`).
#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<(Instant, HashMap<String, String>)>>,
    /// Answer this many requests with 429 and `Retry-After: 5`.
    throttle: AtomicU32,
}

impl Upstream {
    async fn start() -> (Arc<Upstream>, String) {
        let up = Arc::new(Upstream::default());
        let app = axum::Router::new().fallback(record).with_state(up.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (up, format!("http://{addr}"))
    }

    fn arrivals(&self, tenant: &str) -> Vec<(Instant, HashMap<String, String>)> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(_, q)| q.get("t").map(String::as_str) == Some(tenant))
            .cloned()
            .collect()
    }
}

async fn record(State(up): State<Arc<Upstream>>, RawQuery(q): RawQuery) -> Response {
    let query = q
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    up.seen.lock().unwrap().push((Instant::now(), query));
    let throttled = up
        .throttle
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    if throttled {
        return (
            http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "5")],
            "{\"error\":{\"code\":\"TooManyRequests\"}}",
        )
            .into_response();
    }
    axum::Json(serde_json::json!({"value": []})).into_response()
}

/// The most arrivals in any window of `span` starting at an arrival.
fn busiest(times: &[Instant], span: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| **x < t[i] + span).count())
        .max()
        .unwrap_or(0)
}

/// A sandbox (for tokens), the upstream, and the text of a replica's config.
struct Rig {
    _sandbox: Sandbox,
    upstream: Arc<Upstream>,
    sandbox_url: String,
    upstream_url: String,
}

impl Rig {
    async fn start() -> Rig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox = Sandbox::start(listener, SandboxOptions::default())
            .await
            .unwrap();
        let (upstream, upstream_url) = Upstream::start().await;
        Rig {
            sandbox_url: sandbox.url(),
            _sandbox: sandbox,
            upstream,
            upstream_url,
        }
    }

    /// A replica's config: one route limited to `per_minute` (and 10× that an hour), the
    /// store at `redis_url` shared by `replicas`. The timeout is long: on a loaded test machine
    /// a debug build's call can take more than the default 250 ms, and every decision taken
    /// locally then would spend a share on top of the shared quota.
    fn config(&self, redis_url: &str, per_minute: u32, replicas: u32, admin: u16) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace_secs = 1

[log]
access_log = false

[cloud]
authority_host = "{sandbox}"

[credentials.app]
type = "client_secret"
tenant_id = "{tenant_a}"
client_id = "{client_id}"
client_secret = "{secret}"

[credentials.app.tenants]
contoso = "{tenant_b}"

[[route]]
name = "mde"
prefix = "/"
upstream = "{upstream}"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"
rate_limit = "mde"

[rate_limit.mde]
per_minute = {per_minute}
per_hour = {per_hour}
max_wait_secs = 30

[rate_limit_store]
type = "redis"
url = "{redis_url}"
key_prefix = "test:"
timeout_ms = 1000
replicas_hint = {replicas}
"#,
            sandbox = self.sandbox_url,
            upstream = self.upstream_url,
            tenant_a = sandbox::TENANT_A,
            tenant_b = sandbox::TENANT_B,
            client_id = sandbox::DEFAULT_CLIENT_ID,
            secret = sandbox::DEFAULT_CLIENT_SECRET,
            per_hour = per_minute * 10,
        )
    }
}

/// A proxy process of the rig, with its admin port.
struct Replica {
    proxy: Proxy,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn replica(
    rig: &Rig,
    redis: &str,
    per_minute: u32,
    replicas: u32,
    env: &[(&str, &str)],
) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let text = rig.config(redis, per_minute, replicas, admin);
    let scale = SCALE.to_string();
    let mut all = vec![("DEFENDER_PROXY_TEST_TIME_SCALE", scale.as_str())];
    all.extend_from_slice(env);
    let proxy = Proxy::start_with_env(&text, dir.path(), "info", &all).await;
    Replica {
        proxy,
        admin: format!("http://127.0.0.1:{admin}"),
        _dir: dir,
    }
}

/// GET through replica `r` as request `i` of tenant `t` (`a`: home, `b`: contoso).
async fn get(http: &reqwest::Client, base: &str, r: usize, i: usize, t: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut req = http.get(format!("{base}/api/alerts?r={r}&i={i}&t={t}"));
    if t == "b" {
        req = req.header("x-tenant-id", "contoso");
    }
    let status = req
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    (status, started.elapsed())
}

async fn readyz(http: &reqwest::Client, admin: &str) -> (u16, serde_json::Value) {
    let resp = http.get(format!("{admin}/readyz")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Every replica sends `per_replica` requests of tenant `a`, 100 ms apart, the replicas a third
/// of that apart from each other (slots as close as a millisecond could be swapped by a loaded
/// machine on their way to the upstream); the statuses.
async fn hammer(http: &reqwest::Client, replicas: &[&Replica], per_replica: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for (r, rep) in replicas.iter().enumerate() {
        for i in 0..per_replica {
            let (http, base) = (http.clone(), rep.proxy.base.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i as u64 + 33 * r as u64)).await;
                get(&http, &base, r, i, "a").await.0
            }));
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

/// Three replicas, one 20-a-minute quota: the upstream never sees more than 20 of tenant `a`
/// in a minute, queued requests go in arrival order per replica, tenant `b` never waits.
async fn three_replicas_share(skewed: &[(&str, &str)]) -> Vec<Replica> {
    let redis = RedisServer::start().await;
    let rig = Rig::start().await;
    let http = common::client();
    let mut reps = Vec::new();
    for r in 0..3 {
        let env = if r == 2 { skewed } else { &[] };
        reps.push(replica(&rig, &redis.url(), 20, 3, env).await);
    }
    // Tokens first (three of the quota), so that the order below is the limiter's alone.
    for (r, rep) in reps.iter().enumerate() {
        assert_eq!(get(&http, &rep.proxy.base, r, 0, "w").await.0, 200);
    }
    let refs: Vec<&Replica> = reps.iter().collect();
    let other = {
        let (http, base) = (http.clone(), reps[1].proxy.base.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let mut out = Vec::new();
            for i in 0..3 {
                out.push(get(&http, &base, 1, i, "b").await);
            }
            out
        })
    };
    let statuses = hammer(&http, &refs, 16).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for (status, took) in other.await.unwrap() {
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(2), "tenant b waited {took:?}");
    }
    let a = rig.upstream.arrivals("a");
    assert_eq!(a.len(), 48);
    let times: Vec<Instant> = a.iter().map(|(t, _)| *t).collect();
    assert!(
        busiest(&times, MINUTE) <= 20,
        "{} in one minute",
        busiest(&times, MINUTE)
    );
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        span >= 2 * MINUTE - Duration::from_millis(500),
        "48 requests at 20 a minute took only {span:?}"
    );
    for r in 0..3 {
        let order: Vec<usize> = a
            .iter()
            .filter(|(_, q)| q["r"] == r.to_string())
            .map(|(_, q)| q["i"].parse().unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "replica {r} sent out of arrival order");
    }
    drop(redis);
    reps
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_one_quota_in_arrival_order() {
    for r in three_replicas_share(&[]).await {
        r.proxy.terminate();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_a_skewed_clock_keeps_the_shared_limit() {
    let reps = three_replicas_share(&[("DEFENDER_PROXY_TEST_CLOCK_OFFSET_MS", "45000")]).await;
    let mut reps = reps.into_iter();
    let (_, logs) = reps.nth(2).unwrap().proxy.terminate();
    let skew = logs
        .lines()
        .find(|l| l.contains("connected to Redis"))
        .unwrap_or_else(|| panic!("no clock line in {logs}"));
    assert!(
        skew.contains("skew_ms=4"),
        "the offset was not in effect: {skew}"
    );
    for r in reps {
        r.proxy.terminate();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_pause_seen_by_one_replica_holds_every_replica() {
    let redis = RedisServer::start().await;
    let rig = Rig::start().await;
    let http = common::client();
    let a = replica(&rig, &redis.url(), 1000, 2, &[]).await;
    let b = replica(&rig, &redis.url(), 1000, 2, &[]).await;
    // Tokens first, so the timing below is the limiter's alone.
    for (r, rep) in [&a, &b].iter().enumerate() {
        assert_eq!(get(&http, &rep.proxy.base, r, 99, "w").await.0, 200);
        assert_eq!(get(&http, &rep.proxy.base, r, 99, "w").await.0, 200);
        assert_eq!(get(&http, &rep.proxy.base, r, 98, "b").await.0, 200);
    }
    rig.upstream.throttle.store(1, Ordering::Release);
    let throttled = {
        let (http, base) = (http.clone(), a.proxy.base.clone());
        tokio::spawn(async move { get(&http, &base, 0, 0, "a").await })
    };
    let first = loop {
        if let Some((t, _)) = rig.upstream.arrivals("a").first() {
            break *t;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = get(&http, &b.proxy.base, 1, 1, "a").await;
    assert_eq!(status, 200);
    let (status, took) = get(&http, &b.proxy.base, 1, 2, "b").await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "another tenant waited {took:?}"
    );
    assert_eq!(throttled.await.unwrap().0, 200, "A absorbs the 429");
    let from_b: Vec<Instant> = rig
        .upstream
        .arrivals("a")
        .iter()
        .filter(|(_, q)| q["r"] == "1")
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(from_b.len(), 1);
    let after = from_b[0] - first;
    assert!(
        after >= Duration::from_millis(4950),
        "B sent {after:?} after the 429"
    );
    assert!(
        after < Duration::from_secs(7),
        "B resumed only {after:?} after the 429"
    );
    a.proxy.terminate();
    b.proxy.terminate();
}

/// The remaining-budget headers and `/ratelimits` of a replica count every replica's requests,
/// as its last reservation found them in Redis.
#[tokio::test(flavor = "multi_thread")]
async fn the_remaining_budget_a_replica_tells_is_the_shared_one() {
    let redis = RedisServer::start().await;
    let rig = Rig::start().await;
    let http = common::client();
    let a = replica(&rig, &redis.url(), 20, 2, &[]).await;
    let b = replica(&rig, &redis.url(), 20, 2, &[]).await;
    // Tokens first (their requests are the tenant's too: two of the quota).
    for (r, rep) in [&a, &b].iter().enumerate() {
        assert_eq!(get(&http, &rep.proxy.base, r, 99, "w").await.0, 200);
    }
    for i in 0..3 {
        assert_eq!(get(&http, &a.proxy.base, 0, i, "a").await.0, 200);
    }
    let resp = http
        .get(format!("{}/api/alerts?r=1&i=0&t=a", b.proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // 2 + 3 + this one: 6 of 20 a minute and of 200 an hour, whichever replica sent them.
    assert_eq!(header("x-defender-proxy-ratelimit").as_deref(), Some("mde"));
    assert_eq!(
        header("x-defender-proxy-ratelimit-remaining-minute").as_deref(),
        Some("14")
    );
    assert_eq!(
        header("x-defender-proxy-ratelimit-remaining-hour").as_deref(),
        Some("194")
    );
    let budgets = common::json(
        http.get(format!("{}/ratelimits", b.admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mde = &budgets["limits"][0];
    assert_eq!(mde["limit"], "mde", "{budgets}");
    assert_eq!(mde["windows"][0]["used"], 6, "{budgets}");
    assert_eq!(mde["windows"][0]["limit"], 20, "{budgets}");
    assert!(mde["shared_as_of_secs_ago"].is_number(), "{budgets}");
    a.proxy.terminate();
    b.proxy.terminate();
    drop(redis);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_redis_dies_replicas_keep_their_share_and_recover_by_themselves() {
    let mut redis = RedisServer::start().await;
    let rig = Rig::start().await;
    let http = common::client();
    let reps = [
        replica(&rig, &redis.url(), 20, 2, &[]).await,
        replica(&rig, &redis.url(), 20, 2, &[]).await,
    ];
    for r in &reps {
        assert_eq!(get(&http, &r.proxy.base, 9, 0, "w").await.0, 200);
        let (status, body) = readyz(&http, &r.admin).await;
        assert_eq!(
            (status, body["rate_limit_store"].as_str()),
            (200, Some("ok"))
        );
    }
    redis.kill();
    let refs: Vec<&Replica> = reps.iter().collect();
    let statuses = hammer(&http, &refs, 14).await;
    assert!(statuses.iter().all(|s| *s < 500 && *s != 0), "{statuses:?}");
    let a = rig.upstream.arrivals("a");
    for r in 0..2 {
        let times: Vec<Instant> = a
            .iter()
            .filter(|(_, q)| q["r"] == r.to_string())
            .map(|(t, _)| *t)
            .collect();
        assert!(
            busiest(&times, MINUTE) <= 10,
            "replica {r} exceeded its share"
        );
    }
    for r in &reps {
        let (status, body) = readyz(&http, &r.admin).await;
        assert_eq!(
            (status, body["rate_limit_store"].as_str()),
            (200, Some("degraded"))
        );
        let metrics = http
            .get(format!("{}/metrics", r.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let degraded = metrics
            .lines()
            .find(|l| l.starts_with("defender_proxy_ratelimit_store_degraded_total "))
            .and_then(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(degraded > 0, "{metrics}");
    }
    redis.restart().await;
    for r in &reps {
        let back = eventually(Duration::from_secs(10), async || {
            readyz(&http, &r.admin).await.1["rate_limit_store"] == "ok"
        })
        .await;
        assert!(back, "replica did not return to the shared store");
    }
    // Shared again: one replica may now send the whole quota (its share alone is 10), and the
    // other's next request queues behind it.
    let mut sent = Vec::new();
    for i in 0..20 {
        let (http, base) = (http.clone(), reps[0].proxy.base.clone());
        sent.push(tokio::spawn(
            async move { get(&http, &base, 0, i, "b").await },
        ));
    }
    for s in sent {
        let (status, took) = s.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(2),
            "queued {took:?}: not the shared quota"
        );
    }
    let (status, took) = get(&http, &reps[1].proxy.base, 1, 0, "b").await;
    assert_eq!(status, 200);
    assert!(
        took >= MINUTE - Duration::from_secs(1),
        "sent after {took:?}: not shared"
    );
    let mut logs = String::new();
    for r in reps {
        logs.push_str(&r.proxy.terminate().1);
    }
    assert_eq!(logs.matches("Redis unavailable").count(), 2, "{logs}");
}
