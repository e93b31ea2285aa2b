//! Token behaviour seen from outside: single-flight on a cold cache, refresh before expiry,
//! refusals with their AADSTS code, retries of transient failures, and replay after a 401.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Setup, TestEnv, json, start};
use defender_sandbox::{self as sandbox, SandboxOptions, TokenFault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_requests_cause_one_token_request() {
    let env = Arc::new(start(Setup::default()).await);
    env.sandbox
        .set_token_fault_times(TokenFault::Delay { millis: 300 }, 1);
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let env = env.clone();
            tokio::spawn(async move { env.get(&format!("/api/_test/echo/{i}")).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(env.sandbox.token_requests(), 1);
}

#[tokio::test]
async fn a_short_lived_token_is_replaced_before_expiry_without_a_failed_request() {
    let sandbox = SandboxOptions {
        token_lifetime_secs: 3,
        ..SandboxOptions::default()
    };
    let env = start(Setup {
        sandbox,
        ..Setup::default()
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut n = 0;
    while tokio::time::Instant::now() < deadline {
        let resp = env.get("/api/_test/echo/x").await;
        assert_eq!(resp.status(), 200, "request {n} failed");
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetched = env.sandbox.token_requests();
    assert!(
        fetched >= 3,
        "tokens were not renewed: {fetched} fetches in 8 s of 3 s tokens"
    );
    assert!(fetched <= 8, "too many token requests: {fetched}");
}

#[tokio::test]
async fn a_rejected_secret_gives_502_with_the_aadsts_code_and_few_token_requests() {
    let env = start(Setup {
        secret: Some("wrong-secret-value".into()),
        ..Setup::default()
    })
    .await;
    for _ in 0..50 {
        let resp = env.get("/api/incidents").await;
        assert_eq!(resp.status(), 502);
        assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
        let body = json(resp).await;
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("AADSTS7000215"), "{msg}");
        assert!(!msg.contains("wrong-secret-value"), "{msg}");
    }
    assert!(
        env.sandbox.token_requests() <= 2,
        "{} token requests",
        env.sandbox.token_requests()
    );
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = json(ready).await;
    assert!(
        body["credentials"]["app"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215"),
        "{body}"
    );
}

#[tokio::test]
async fn transient_token_failures_are_retried() {
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault_times(
        TokenFault::Status {
            status: 503,
            retry_after_secs: Some(1),
            error: None,
            aadsts: None,
        },
        2,
    );
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.sandbox.token_requests(), 3);
}

#[tokio::test]
async fn garbled_and_empty_token_answers_are_retried() {
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault_times(TokenFault::Garbage, 1);
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault_times(TokenFault::EmptyOk, 1);
    assert_eq!(env.get("/api/incidents").await.status(), 200);
}

#[tokio::test]
async fn an_identity_provider_that_keeps_failing_gives_503_with_retry_after() {
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault(Some(TokenFault::Status {
        status: 500,
        retry_after_secs: None,
        error: None,
        aadsts: None,
    }));
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenUnavailable"));
    assert!(resp.headers().contains_key("retry-after"));
    env.sandbox.set_token_fault(None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.get("/api/incidents").await.status(),
        200,
        "recovers once the fault clears"
    );
}

#[tokio::test]
async fn an_upstream_401_drops_the_token_and_replays_once() {
    let env = start(Setup::default()).await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(env.sandbox.token_requests(), 1);
    env.sandbox.revoke_tokens();
    let resp = env
        .http
        .post(format!("{}/api/advancedhunting/run", env.base))
        .json(&serde_json::json!({"Query": "DeviceInfo | take 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the replay carried the body");
    assert_eq!(env.sandbox.token_requests(), 2);
}

#[tokio::test]
async fn tokens_are_cached_per_tenant_and_scope() {
    let env = start(Setup::default()).await;
    for _ in 0..3 {
        assert_eq!(env.get("/api/incidents").await.status(), 200);
        assert_eq!(env.get("/mde/api/machines").await.status(), 200);
        let resp = env
            .http
            .get(format!("{}/api/incidents", env.base))
            .header("x-tenant-id", "contoso")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(env.sandbox.token_requests(), 3);
}

#[tokio::test]
async fn v1_token_endpoint_works_with_string_lifetimes() {
    let env = common::start_edited(Setup::default(), |t| {
        t.replace(
            "client_secret = \"sandbox-secret\"",
            "client_secret = \"sandbox-secret\"\ntoken_version = 1",
        )
    })
    .await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(env.sandbox.token_requests(), 1);
}

#[tokio::test]
async fn an_explicit_token_url_is_used_instead_of_the_authority() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = common::start_edited(Setup::default(), |t| {
        let sandbox_url = t.split("authority_host = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
        t.replace(&format!("authority_host = \"{sandbox_url}\""), &format!("authority_host = \"http://{dead}\""))
            .replace("client_secret = \"sandbox-secret\"", &format!("client_secret = \"sandbox-secret\"\ntoken_url = \"{sandbox_url}/{{tenant}}/oauth2/v2.0/token\""))
    })
    .await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(env.sandbox.token_requests(), 1);
}

#[tokio::test]
async fn each_tenant_gets_a_token_of_its_own_and_the_api_counts_any_mix_up() {
    let env = start(Setup::default()).await;
    let cases = [
        (None, sandbox::TENANT_A, 200),
        (Some("contoso"), sandbox::TENANT_B, 200),
        (Some(sandbox::TENANT_B), sandbox::TENANT_B, 200),
        // The control: the sandbox refuses a token of another tenant than the one expected.
        (Some("contoso"), sandbox::TENANT_A, 403),
    ];
    for (header, expected, status) in cases {
        let mut req = env
            .http
            .get(format!("{}/api/_test/echo", env.base))
            .header("x-sandbox-expect-tenant", expected);
        if let Some(tenant) = header {
            req = req.header("x-tenant-id", tenant);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status, "{header:?} expecting {expected}");
    }
    let stats = json(
        env.http
            .get(format!("{}/_sandbox/stats", env.sandbox.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["rejected_tokens"]["wrong_tenant"], 1);
    assert_eq!(stats["rejected_tokens"]["expired"], 0);
}
