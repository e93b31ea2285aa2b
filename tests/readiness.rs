//! Readiness that tells the truth from the start (issue 22): the routes' home-tenant tokens
//! are fetched in the background at start, `/readyz` is 503 with the reason until they were
//! had, and a refused partner tenant never makes the proxy unready.

mod common;

use std::time::{Duration, Instant};

use common::{Setup, TestEnv, json, start};
use defender_proxy::config::Config;
use defender_sandbox::{self as sandbox, Sandbox, SandboxClient, SandboxOptions, TokenFault};

fn warming(setup: Setup) -> Setup {
    Setup {
        server: "warm_up = true".into(),
        ..setup
    }
}

/// Polls `/readyz` until `done` accepts its status and body, for at most 10 s.
async fn readyz_until(
    env: &TestEnv,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let started = Instant::now();
    loop {
        let resp = env
            .http
            .get(format!("{}/readyz", env.admin))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = json(resp).await;
        if done(status, &body) || started.elapsed() > Duration::from_secs(10) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_home_tokens_are_fetched_at_start_and_then_the_proxy_is_ready() {
    let env = start(warming(Setup::default())).await;
    let (status, body) = readyz_until(&env, |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"]["app"], "ok");
    assert_eq!(
        env.sandbox.token_requests(),
        2,
        "one per route scope, home tenant only"
    );
    assert_eq!(env.sandbox.api_requests(), 0, "without a single request");
    assert_eq!(env.get("/api/incidents?$top=1").await.status(), 200);
    assert_eq!(
        env.sandbox.token_requests(),
        2,
        "the request found its token warm"
    );
}

/// With a wrong secret, `/readyz` said 200 `untried` until the first request failed.
#[tokio::test]
async fn a_refused_credential_keeps_the_proxy_unready_with_the_reason() {
    let env = start(warming(Setup {
        secret: Some("wrong-secret-42".into()),
        ..Setup::default()
    }))
    .await;
    let (status, body) = readyz_until(&env, |_, b| {
        b["credentials"]["app"]
            .as_str()
            .is_some_and(|r| r.contains("AADSTS"))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let reason = body["credentials"]["app"].as_str().unwrap();
    assert!(reason.contains("AADSTS7000215"), "{reason}");
    assert!(!reason.contains("wrong-secret-42"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = readyz_until(&env, |_, _| true).await;
    assert_eq!(status, 503, "still refused");
}

#[tokio::test]
async fn readiness_says_it_is_warming_up_until_the_first_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(listener, SandboxOptions::default())
        .await
        .unwrap();
    sandbox.set_token_fault(Some(TokenFault::Delay { millis: 1500 }));
    let text = common::config_text(&sandbox.url(), &warming(Setup::default()));
    let config = Config::from_toml(&text, &|_: &str| None).unwrap();
    let listeners = defender_proxy::Listeners::bind(&config).await.unwrap();
    let proxy = defender_proxy::Handle::spawn(config, listeners).unwrap();
    let env = TestEnv {
        base: format!("http://{}", proxy.proxy_addr),
        admin: format!("http://{}", proxy.admin_addr.unwrap()),
        sandbox,
        proxy,
        http: common::client(),
    };
    let (status, body) = readyz_until(&env, |_, _| true).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["credentials"]["app"].as_str().unwrap();
    assert!(
        reason.starts_with("warming up: no token yet for tenant "),
        "{reason}"
    );
    let (status, body) = readyz_until(&env, |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_refused_partner_tenant_does_not_make_the_proxy_unready() {
    let sandbox = SandboxOptions {
        clients: vec![SandboxClient {
            client_id: sandbox::DEFAULT_CLIENT_ID.into(),
            client_secret: sandbox::DEFAULT_CLIENT_SECRET.into(),
            tenants: vec![sandbox::TENANT_A.into()],
        }],
        ..SandboxOptions::default()
    };
    let env = start(warming(Setup {
        sandbox,
        ..Setup::default()
    }))
    .await;
    let (status, _) = readyz_until(&env, |s, _| s == 200).await;
    assert_eq!(status, 200);
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("x-tenant-id", "contoso")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "the customer tenant's requests fail");
    let (status, body) = readyz_until(&env, |_, _| true).await;
    assert_eq!(status, 200, "but not the proxy's readiness: {body}");
}

/// A secret fixed on disk is warmed up after the reload, without waiting for a request.
#[tokio::test]
async fn a_reload_warms_up_the_new_credential() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "wrong-secret\n").unwrap();
    let (env, _source) = common::start_reloading(warming(Setup::default()), dir.path(), |t| {
        t.replace(
            "client_secret = \"sandbox-secret\"",
            "client_secret_file = \"secret\"",
        )
    })
    .await;
    let (status, body) = readyz_until(&env, |_, b| {
        b["credentials"]["app"]
            .as_str()
            .is_some_and(|r| r.contains("AADSTS"))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    std::fs::write(
        dir.path().join("secret"),
        format!("{}\n", sandbox::DEFAULT_CLIENT_SECRET),
    )
    .unwrap();
    let (status, body) = readyz_until(&env, |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"]["app"], "ok", "fetched, not untried");
    assert_eq!(env.sandbox.api_requests(), 0, "no request was needed");
}
