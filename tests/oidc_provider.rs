//! The client-secret flow and the device-code sign-in against an OAuth2 server nobody here
//! wrote: npm `oidc-provider@9`, installed once under `target/oidc-provider` (the test fails,
//! never skips, without node/npm).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use axum::Router;
use axum::http::HeaderMap;
use common::{Setup, TestEnv, json};

const RESOURCE: &str = "https://api.security.microsoft.com";

/// One install at a time: the tests of this file run in parallel.
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs oidc-provider@9 under target/ once and returns the folder holding it.
fn install() -> PathBuf {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/oidc-provider");
    if !dir.join("node_modules/oidc-provider/package.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("oidc-provider@9")
            .status()
            .expect("npm (with node) is needed to install oidc-provider for this test");
        assert!(status.success(), "npm install oidc-provider@9 failed");
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/server.mjs"),
        dir.join("server.mjs"),
    )
    .unwrap();
    dir
}

struct Oidc(Child);

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_oidc() -> (Oidc, u16) {
    let dir = tokio::task::spawn_blocking(install).await.unwrap();
    let port = common::binary::free_port();
    let child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node is needed for this test");
    let oidc = Oidc(child);
    assert!(
        common::binary::listening(port).await,
        "oidc-provider did not start"
    );
    (oidc, port)
}

/// An upstream that answers with the Authorization header it received.
async fn echo_upstream() -> String {
    let app = Router::new().fallback(|headers: HeaderMap| async move {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        axum::Json(serde_json::json!({ "authorization": auth }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn proxy_for(port: u16, secret: &str) -> TestEnv {
    let upstream = echo_upstream().await;
    let token_url = format!("http://127.0.0.1:{port}/token");
    let setup = Setup {
        upstream: Some(upstream),
        secret: Some(secret.into()),
        ..Setup::default()
    };
    common::start_edited(setup, move |t| {
        t.replace(
            "client_id = \"00000000-0000-0000-0000-00000000c1d0\"",
            "client_id = \"cc-client\"",
        )
        .replacen(
            "client_secret = ",
            &format!("token_url = \"{token_url}\"\nclient_secret = "),
            1,
        )
        .replace(
            "https://api.securitycenter.microsoft.com/.default",
            &format!("{RESOURCE}/.default"),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_tokens_from_oidc_provider_are_injected_and_cached() {
    let (_oidc, port) = start_oidc().await;
    let env = proxy_for(port, "cc-secret").await;
    let first = json(env.get("/api/anything").await).await["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("Bearer ") && first.len() > 20, "{first}");
    let second = json(env.get("/mde/api/other").await).await["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first, second, "one cached token for the one scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_oidc_provider() {
    let (_oidc, port) = start_oidc().await;
    let env = proxy_for(port, "not-the-secret").await;
    let resp = env.get("/api/anything").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
    let msg = json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("invalid_client") && !msg.contains("not-the-secret"),
        "{msg}"
    );
}

/// A proxy config whose one credential is the device-flow client of oidc-provider at `port`.
fn device_config(port: u16, store: &Path, upstream: &str) -> String {
    common::config_text(upstream, &Setup::default())
        .replace("type = \"client_secret\"", "type = \"device_code\"")
        .replace(
            "client_id = \"00000000-0000-0000-0000-00000000c1d0\"",
            "client_id = \"device-client\"",
        )
        .replace(
            "client_secret = \"sandbox-secret\"",
            &format!(
                "token_store = \"{}\"\ntoken_url = \"http://127.0.0.1:{port}/token\"",
                store.display()
            ),
        )
        .replace(
            &format!(
                "[credentials.app.tenants]\ncontoso = \"{}\"\n",
                defender_sandbox::TENANT_B
            ),
            "",
        )
}

/// Runs `defender-proxy login` against oidc-provider and approves the code as the user would.
async fn login(port: u16, dir: &Path, store: &Path) -> (String, String) {
    use std::io::{BufRead, BufReader, Read};
    let config =
        common::binary::write_config(dir, &device_config(port, store, "http://127.0.0.1:1"));
    let mut child = Command::new(common::binary::BIN)
        .args(["login", "--credential", "app", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let (line, mut reader) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (line, reader)
    })
    .await
    .unwrap();
    let code = line
        .split("enter the code ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let approved = common::client()
        .get(format!(
            "http://127.0.0.1:{port}/test/approve?user_code={code}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 204);
    let (status, rest) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        (child.wait().unwrap(), rest)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{line}{rest}");
    (line, rest)
}

/// A proxy in this process for the signed-in user, with a fresh token cache.
async fn user_proxy(port: u16, store: &Path, upstream: &str) -> defender_proxy::Handle {
    let text = device_config(port, store, upstream);
    let config = defender_proxy::config::Config::from_toml(&text, &|_: &str| None).unwrap();
    let listeners = defender_proxy::Listeners::bind(&config).await.unwrap();
    defender_proxy::Handle::spawn(config, listeners).unwrap()
}

async fn authorization_via(proxy: &defender_proxy::Handle) -> reqwest::Response {
    common::client()
        .get(format!("http://{}/api/incidents", proxy.proxy_addr))
        .send()
        .await
        .unwrap()
}

fn stored_refresh_token(store: &Path) -> String {
    defender_proxy::token::device_code::read_store(store)
        .expect("a stored sign-in")
        .refresh_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_spends_and_rotates_refresh_tokens_from_oidc_provider() {
    let (_oidc, port) = start_oidc().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("user.json");
    login(port, dir.path(), &store).await;
    let upstream = echo_upstream().await;
    let first_rt = stored_refresh_token(&store);

    // A proxy turns the stored refresh token into an access token and stores the rotated one.
    let proxy = user_proxy(port, &store, &upstream).await;
    let resp = authorization_via(&proxy).await;
    assert_eq!(resp.status(), 200);
    let bearer = json(resp).await["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        bearer.starts_with("Bearer ") && bearer.len() > 20,
        "{bearer}"
    );
    let second_rt = stored_refresh_token(&store);
    assert_ne!(first_rt, second_rt, "the rotated refresh token is stored");
    proxy.shutdown().await.unwrap();

    // A restarted proxy (empty cache) spends the rotated one and rotates again.
    let proxy = user_proxy(port, &store, &upstream).await;
    assert_eq!(authorization_via(&proxy).await.status(), 200);
    let third_rt = stored_refresh_token(&store);
    assert_ne!(second_rt, third_rt);
    proxy.shutdown().await.unwrap();

    // oidc-provider refuses a spent refresh token and, seeing it reused, revokes the sign-in.
    let reused = common::client()
        .post(format!("http://127.0.0.1:{port}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "device-client"),
            ("refresh_token", second_rt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 400);
    assert_eq!(json(reused).await["error"], "invalid_grant");

    // Now the stored token is dead too: requests say to sign in again, and so does /readyz.
    let proxy = user_proxy(port, &store, &upstream).await;
    let resp = authorization_via(&proxy).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
    let msg = json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("login --credential app"), "{msg}");
    assert!(!msg.contains(&third_rt));
    let ready = common::client()
        .get(format!("http://{}/readyz", proxy.admin_addr.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("login"), "{body}");
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_signs_in_with_a_device_code_from_oidc_provider() {
    let (_oidc, port) = start_oidc().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("user.json");
    let (line, rest) = login(port, dir.path(), &store).await;
    let saved = defender_proxy::token::device_code::read_store(&store).expect("a stored sign-in");
    assert!(saved.refresh_token.len() > 20, "{line}");
    assert!(!line.contains(&saved.refresh_token) && !rest.contains(&saved.refresh_token));
}
