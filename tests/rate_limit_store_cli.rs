//! `[rate_limit_store]` at the command line, against a real `redis-server`: `check` shows it
//! redacted, `check --live` pings it and says clearly why it cannot (wrong password, untrusted
//! certificate), config errors exit 64, and the password never appears in any output.

mod common;

use std::process::Command;
use std::time::Duration;

use common::binary::{BIN, Proxy, write_config};
use common::redis_server::{RedisServer, tls_args};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};

const RIGHT: &str = "right-horse-battery-9c1e";
const WRONG: &str = "wrong-password-7f3a";

fn config(sandbox_url: &str, store: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = ""

[cloud]
authority_host = "{sandbox_url}"

[credentials.app]
type = "client_secret"
tenant_id = "{tenant}"
client_id = "{client_id}"
client_secret = "{secret}"

[[route]]
name = "mde"
prefix = "/"
upstream = "{sandbox_url}"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"
rate_limit = "mde"

[rate_limit.mde]
per_minute = 100

[rate_limit_store]
{store}
"#,
        tenant = sandbox::TENANT_A,
        client_id = sandbox::DEFAULT_CLIENT_ID,
        secret = sandbox::DEFAULT_CLIENT_SECRET,
    )
}

async fn sandbox() -> Sandbox {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sandbox::start(listener, SandboxOptions::default())
        .await
        .unwrap()
}

/// Runs `defender-proxy check [--live]` on `text`; exit code and stdout + stderr.
fn check(text: &str, live: bool, password: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config"]).arg(&path);
    if live {
        cmd.arg("--live");
    }
    let out = cmd.env("REDIS_PASSWORD", password).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_check_live_clearly_and_is_never_printed() {
    let redis = RedisServer::start_with(&["--requirepass", RIGHT]).await;
    let sandbox = sandbox().await;
    let store = format!(
        "type = \"redis\"\nurl = \"{}\"\npassword = \"${{REDIS_PASSWORD}}\"\nreplicas_hint = 2",
        redis.url()
    );
    let text = config(&sandbox.url(), &store);

    let (code, out) = check(&text, false, WRONG);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rate limit store: redis redis://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("password=*** (config/env)"), "{out}");

    let (code, out) = check(&text, true, WRONG);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("live rate limit store check: FAILED: authentication failed"),
        "{out}"
    );
    assert!(!out.contains(WRONG), "the password was printed: {out}");

    let (code, out) = check(&text, true, RIGHT);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("live rate limit store check: ok"), "{out}");
    assert!(!out.contains(RIGHT), "the password was printed: {out}");

    // A replica with the wrong password serves on its local share and logs no password.
    let dir = tempfile::tempdir().unwrap();
    let proxy =
        Proxy::start_with_env(&text, dir.path(), "debug", &[("REDIS_PASSWORD", WRONG)]).await;
    let status = common::client()
        .get(format!("{}/api/alerts", proxy.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let (_, logs) = proxy.terminate();
    assert!(logs.contains("Redis unavailable"), "{logs}");
    assert!(!logs.contains(WRONG), "the password was logged: {logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_redis_with_an_unknown_ca_fails_check_live_clearly() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let args = tls_args(&fixtures);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = RedisServer::start_with(&args).await;
    let sandbox = sandbox().await;
    let store = format!(
        "type = \"redis\"\nurl = \"rediss://localhost:{}\"\ntimeout_ms = 1000",
        redis.port
    );
    let (code, out) = check(&config(&sandbox.url(), &store), true, "");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "live rate limit store check: FAILED: TLS: the server's certificate is not trusted"
        ),
        "{out}"
    );
}

#[test]
fn store_config_errors_name_the_key_and_exit_64() {
    for (store, expected) in [
        ("type = \"redis\"", "rate_limit_store.url: is required"),
        (
            "type = \"redis\"\nurl = \"redis://:secret-in-url@127.0.0.1:6379\"",
            "rate_limit_store.url: must not contain credentials",
        ),
        (
            "type = \"redis\"\nurl = \"http://127.0.0.1:6379\"",
            "rate_limit_store.url: must start with redis:// or rediss://",
        ),
        ("type = \"memcached\"", "rate_limit_store.type"),
        (
            "replicas_hint = 0",
            "rate_limit_store.replicas_hint: must be at least 1",
        ),
        ("timeout_ms = 0", "rate_limit_store.timeout_ms"),
        ("passwd = \"x\"", "rate_limit_store"),
    ] {
        let (code, out) = check(&config("https://login.example", store), false, "");
        assert_eq!(code, 64, "{store}: {out}");
        assert!(out.contains(expected), "{store}: {out}");
        assert!(!out.contains("secret-in-url"), "{out}");
    }
}
