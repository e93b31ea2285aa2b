//! User context: `defender-proxy login` signs in with a device code and stores the refresh
//! token (0600); the proxy then uses and rotates it; a dead one asks for `login` again.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::binary::{BIN, write_config};
use common::{Setup, TestEnv, json};
use defender_proxy::token::device_code::read_store;
use defender_sandbox::{self as sandbox, DeviceStatus, Sandbox, SandboxOptions};

fn user_config(sandbox_url: &str, store: &std::path::Path) -> String {
    common::config_text(sandbox_url, &Setup::default())
        .replace("type = \"client_secret\"", "type = \"device_code\"")
        .replace(
            "client_secret = \"sandbox-secret\"",
            &format!("token_store = \"{}\"", store.display()),
        )
        .replace(
            &format!(
                "[credentials.app.tenants]\ncontoso = \"{}\"\n",
                sandbox::TENANT_B
            ),
            "",
        )
}

async fn sandbox() -> Sandbox {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = SandboxOptions {
        device_code_interval_secs: 1,
        ..SandboxOptions::default()
    };
    Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        opts,
    )
    .await
    .unwrap()
}

/// Runs `login`, answers the sign-in with `decision`, returns (exit code, output).
async fn login(sb: &Sandbox, config: &std::path::Path, decision: DeviceStatus) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["login", "--credential", "app", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let (first, reader) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (line, reader)
    })
    .await
    .unwrap();
    let code = first
        .split("enter the code ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {first:?}"));
    assert!(sb.decide_device_code(code, decision), "{code}");
    let (status, rest) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let mut reader = reader;
        std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status, rest + &String::from_utf8_lossy(&out.stderr))
    })
    .await
    .unwrap();
    (status.code().unwrap_or(-1), format!("{first}{rest}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_refresh_token_that_the_proxy_uses_and_rotates() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("user.json");
    let config = write_config(dir.path(), &user_config(&sb.url(), &store));
    let (code, out) = login(&sb, &config, DeviceStatus::Approved).await;
    assert_eq!(code, 0, "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let first = read_store(&store).unwrap().refresh_token;
    assert!(!out.contains(&first), "the refresh token is never printed");

    let cfg = defender_proxy::config::Config::load(&config, &|_: &str| None).unwrap();
    let listeners = defender_proxy::Listeners::bind(&cfg).await.unwrap();
    let proxy = defender_proxy::Handle::spawn(cfg, listeners).unwrap();
    let env = TestEnv {
        sandbox: sb.clone(),
        base: format!("http://{}", proxy.proxy_addr),
        admin: format!("http://{}", proxy.admin_addr.unwrap()),
        proxy,
        http: common::client(),
    };
    let resp = env.get("/api/incidents?$top=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["value"][0]["tenantId"], sandbox::TENANT_A);
    let second = read_store(&store).unwrap().refresh_token;
    assert_ne!(first, second, "the rotated refresh token was stored");
    assert_eq!(
        env.get("/mde/api/machines?$top=1").await.status(),
        200,
        "another scope from the same sign-in"
    );
    assert_ne!(read_store(&store).unwrap().refresh_token, second);

    sb.revoke_refresh_tokens();
    sb.revoke_tokens();
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
    let msg = json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("defender-proxy login --credential app"),
        "{msg}"
    );
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        json(ready).await["credentials"]["app"]
            .as_str()
            .unwrap()
            .contains("login")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_sign_in_fails_and_stores_nothing() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("user.json");
    let config = write_config(dir.path(), &user_config(&sb.url(), &store));
    let (code, out) = login(&sb, &config, DeviceStatus::Declined).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("declined"), "{out}");
    assert!(!store.exists());
}

#[tokio::test]
async fn requests_before_any_login_say_to_sign_in() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let text = user_config(&sb.url(), &dir.path().join("user.json"));
    let cfg = defender_proxy::config::Config::from_toml(&text, &|_: &str| None).unwrap();
    let listeners = defender_proxy::Listeners::bind(&cfg).await.unwrap();
    let proxy = defender_proxy::Handle::spawn(cfg, listeners).unwrap();
    let resp = common::client()
        .get(format!("http://{}/api/incidents", proxy.proxy_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let msg = json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("no user has signed in yet") && msg.contains("login --credential app"),
        "{msg}"
    );
    assert_eq!(sb.token_requests(), 0);
}
