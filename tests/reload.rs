//! Hot reload: a good config is swapped in, a bad one refused while the old one serves, a
//! changed secret file is picked up, unchanged credentials keep their tokens, and in-flight
//! requests finish on the config they started with.

mod common;

use std::time::Duration;

use common::{Setup, TestEnv, json, start_reloading};
use defender_sandbox as sandbox;

const EXTRA_ROUTE: &str = "\n[[route]]\nname = \"contoso\"\nprefix = \"/contoso/\"\nstrip_prefix = true\nupstream = \"UPSTREAM\"\nscope = \"https://api.security.microsoft.com/.default\"\ncredential = \"app\"\ntenant = \"contoso\"\n";

fn config_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("proxy.toml")
}

/// Waits until `check` holds, polling; fails after 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn metric(env: &TestEnv, needle: &str) -> bool {
    let text = env.metrics().await;
    text.contains(needle)
}

#[tokio::test]
async fn a_changed_config_file_is_swapped_in_and_unchanged_credentials_keep_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (env, _source) = start_reloading(Setup::default(), dir.path(), |t| t).await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(
        env.get("/contoso/api/incidents").await.status(),
        404,
        "no such route yet"
    );
    let text = std::fs::read_to_string(config_path(&dir)).unwrap();
    std::fs::write(
        config_path(&dir),
        text + &EXTRA_ROUTE.replace("UPSTREAM", &env.sandbox.url()),
    )
    .unwrap();
    eventually("the new route", || async {
        metric(
            &env,
            "defender_proxy_config_reloads_total{outcome=\"ok\"} 1",
        )
        .await
    })
    .await;
    let resp = env.get("/contoso/api/incidents?$top=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["value"][0]["tenantId"], sandbox::TENANT_B);
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(
        env.sandbox.token_requests(),
        2,
        "the home tenant's token survived the reload"
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (env, source) = start_reloading(Setup::default(), dir.path(), |t| t).await;
    let good = std::fs::read_to_string(config_path(&dir)).unwrap();
    std::fs::write(
        config_path(&dir),
        good.replace("credential = \"app\"", "credential = \"missing\""),
    )
    .unwrap();
    source.trigger.notify_one();
    eventually("the refusal", || async {
        metric(
            &env,
            "defender_proxy_config_reloads_total{outcome=\"error\"} 1",
        )
        .await
    })
    .await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    std::fs::write(config_path(&dir), "this is = = not toml").unwrap();
    source.trigger.notify_one();
    eventually("the second refusal", || async {
        metric(
            &env,
            "defender_proxy_config_reloads_total{outcome=\"error\"} 2",
        )
        .await
    })
    .await;
    assert_eq!(env.get("/mde/api/machines").await.status(), 200);
}

#[tokio::test]
async fn a_changed_secret_file_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "wrong-secret\n").unwrap();
    let (env, _source) = start_reloading(Setup::default(), dir.path(), |t| {
        t.replace(
            "client_secret = \"sandbox-secret\"",
            "client_secret_file = \"secret\"",
        )
    })
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
    std::fs::write(
        dir.path().join("secret"),
        format!("{}\n", sandbox::DEFAULT_CLIENT_SECRET),
    )
    .unwrap();
    eventually("the new secret", || async {
        env.get("/api/incidents").await.status() == 200
    })
    .await;
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "the new credential has not failed");
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let (env, source) = start_reloading(Setup::default(), dir.path(), |t| t).await;
    let http = env.http.clone();
    let url = format!("{}/mde/api/_test/slow?millis=800", env.base);
    let slow = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    env.wait_in_flight(1).await;
    let text = std::fs::read_to_string(config_path(&dir)).unwrap();
    let without_mde = text.replace("prefix = \"/mde/\"", "prefix = \"/other/\"");
    std::fs::write(config_path(&dir), without_mde).unwrap();
    source.trigger.notify_one();
    eventually("the reload", || async {
        metric(
            &env,
            "defender_proxy_config_reloads_total{outcome=\"ok\"} 1",
        )
        .await
    })
    .await;
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let resp = env.get("/mde/api/machines").await;
    assert_eq!(
        resp.status(),
        404,
        "now served by the catch-all route, unstripped: the sandbox has no such path"
    );
    assert!(TestEnv::code(&resp).is_none());
    assert_eq!(
        env.sandbox.last_api_request().unwrap().path_and_query,
        "/mde/api/machines"
    );
}
