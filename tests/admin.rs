//! The admin listener: health, readiness and Prometheus metrics; graceful shutdown.

mod common;

use std::time::Duration;

use common::{Setup, json, start};

#[tokio::test]
async fn health_and_readiness_before_and_after_a_token() {
    let env = start(Setup::default()).await;
    let h = env
        .http
        .get(format!("{}/healthz", env.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let r = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "untried credentials are ready");
    assert_eq!(json(r).await["credentials"]["app"], "untried");
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let r = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["credentials"]["app"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_latency_with_bounded_labels() {
    let env = start(Setup::default()).await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(env.get("/mde/api/machines").await.status(), 200);
    let resp = env
        .http
        .get(format!("{}/api/x", env.base))
        .header("x-tenant-id", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let text = env.metrics().await;
    for needle in [
        "defender_proxy_requests_total{route=\"defender\",status=\"200\"} 1",
        "defender_proxy_requests_total{route=\"mde\",status=\"200\"} 1",
        "defender_proxy_requests_total{route=\"defender\",status=\"403\"} 1",
        "defender_proxy_token_fetches_total{credential=\"app\",outcome=\"ok\"} 2",
        "defender_proxy_upstream_latency_seconds_count{route=\"defender\"} 1",
        "defender_proxy_token_expiry_seconds{credential=\"app\",tenant=\"home\"}",
        "# TYPE defender_proxy_upstream_latency_seconds histogram",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(
        !text.contains("/api/incidents"),
        "raw paths must not be labels"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let env = start(Setup::default()).await;
    let url = format!("{}/api/_test/slow?millis=1500", env.base);
    let http = env.http.clone();
    let slow = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    env.wait_in_flight(1).await;
    let addr = env.proxy.proxy_addr;
    env.proxy.shutdown().await.unwrap();
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_that_outlast_the_grace_period() {
    gives_up_after_the_grace(Setup::default()).await;
}

#[tokio::test]
async fn per_core_threads_give_up_on_requests_that_outlast_the_grace_period() {
    gives_up_after_the_grace(Setup {
        server: "runtime = \"per-core\"\nworkers = 2".into(),
        ..Setup::default()
    })
    .await;
}

async fn gives_up_after_the_grace(setup: Setup) {
    let env = common::start_edited(setup, |t| {
        t.replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 1")
    })
    .await;
    let url = format!("{}/api/_test/slow?millis=10000", env.base);
    let http = env.http.clone();
    let slow = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    env.wait_in_flight(1).await;
    let started = std::time::Instant::now();
    env.proxy.shutdown().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "shutdown took {took:?}"
    );
    // The request left over is cut off with its connection, not served on after the grace.
    let left = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .expect("the left-over request ends with the grace period")
        .unwrap();
    assert!(left.is_err(), "{left:?}");
}
