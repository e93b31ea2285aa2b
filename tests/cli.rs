//! The real binary: exit codes, `check` output, logs free of secrets and tokens, graceful
//! SIGTERM, and flat memory while streaming a large download.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::{BIN, Proxy, free_port, listening, write_config};
use common::{Setup, config_text};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};

fn run_check(config: &Path, extra_env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config"])
        .arg(config)
        .env_remove("AZURE_CLIENT_SECRET");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_exits_zero_and_bad_usage_exits_64() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("check"));
    for sub in [
        "run",
        "check",
        "demo",
        "sandbox",
        "health",
        "consent-url",
        "login",
    ] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
    }
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn config_errors_exit_64_naming_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text("http://127.0.0.1:1", &Setup::default())
        .replace("credential = \"app\"", "credential = \"ap\"");
    let (code, _, err) = run_check(&write_config(dir.path(), &text), &[]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("route[0].credential: no credential named \"ap\""),
        "{err}"
    );

    let text = config_text("http://127.0.0.1:1", &Setup::default())
        .replace("shutdown_grace_secs = 5", "shutdown_grace = 5");
    let (code, _, err) = run_check(&write_config(dir.path(), &text), &[]);
    assert_eq!(code, 64);
    assert!(err.contains("server.shutdown_grace"), "{err}");

    let (code, _, err) = run_check(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 64);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn the_shipped_config_needs_its_variables_and_never_prints_the_secret() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let (code, _, err) = run_check(
        &shipped,
        &[
            ("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"),
            ("AZURE_CLIENT_ID", "c"),
        ],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains(
            "credentials.app.client_secret: environment variable AZURE_CLIENT_SECRET is not set"
        ),
        "{err}"
    );
    let env = [
        ("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"),
        ("AZURE_CLIENT_ID", "c"),
        ("AZURE_CLIENT_SECRET", "super-secret-value-42"),
    ];
    let (code, out, err) = run_check(&shipped, &env);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("super-secret-value-42") && !err.contains("super-secret-value-42"));
    for needle in [
        "/mde",
        "https://api.securitycenter.microsoft.com",
        "/graph",
        "https://api.security.microsoft.com/.default",
        "(prefix stripped)",
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
    assert!(
        !out.contains("warnings:"),
        "the shipped limits queue a burst:\n{out}"
    );
}

async fn sandbox_with(opts: SandboxOptions) -> Sandbox {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sandbox::start(listener, opts).await.unwrap()
}

#[tokio::test]
async fn logs_never_contain_the_secret_or_a_token_and_sigterm_exits_zero() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    let proxy = Proxy::start(&text, dir.path(), "trace").await;
    let http = common::client();
    for path in ["/api/incidents", "/mde/api/machines", "/api/_test/echo/x"] {
        let resp = http
            .get(format!("{}{path}", proxy.base))
            .header("authorization", "Bearer client-token-xyz")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let token = sb
        .last_api_request()
        .unwrap()
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    let (code, logs) = proxy.terminate();
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("request"), "the access log is there: {logs}");
    assert!(
        !logs.contains('\x1b'),
        "no colour codes in a log that is not a terminal"
    );
    for secret in [sandbox::DEFAULT_CLIENT_SECRET, &token, "client-token-xyz"] {
        assert!(!logs.contains(secret), "{secret:?} leaked into the logs");
    }
}

#[tokio::test]
async fn a_1_gib_download_streams_with_flat_memory() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    let proxy = Proxy::start(&text, dir.path(), "warn").await;
    let n: u64 = 1 << 30;
    let mut resp = common::client()
        .get(format!("{}/api/_test/download?bytes={n}", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len() as u64;
    }
    assert_eq!(total, n);
    let peak = proxy.peak_rss_kib();
    eprintln!("proxy peak RSS while streaming 1 GiB: {peak} KiB");
    let (code, _) = proxy.terminate();
    assert_eq!(code, 0);
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB while streaming 1 GiB"
    );
}

#[tokio::test]
async fn the_demo_serves_the_sandbox_through_the_proxy() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--sandbox-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = listening(port).await;
    let http = common::client();
    let incidents = if up {
        http.get(format!("http://127.0.0.1:{port}/api/incidents?$top=2"))
            .send()
            .await
            .ok()
    } else {
        None
    };
    let partner = if up {
        http.get(format!("http://127.0.0.1:{port}/api/alerts?$top=1"))
            .header("x-tenant-id", "contoso")
            .send()
            .await
            .ok()
    } else {
        None
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut banner = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut banner)
        .unwrap();
    assert!(up, "the demo did not start");
    let incidents = common::json(incidents.unwrap()).await;
    assert_eq!(incidents["value"].as_array().unwrap().len(), 2);
    let partner = common::json(partner.unwrap()).await;
    assert_eq!(partner["value"][0]["tenantId"], sandbox::TENANT_B);
    assert!(
        banner.contains(&format!(
            "curl -s 'http://127.0.0.1:{port}/api/incidents?$top=2'"
        )),
        "{banner}"
    );
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_an_access_line() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    let text = text.replace("[cloud]", "[log]\nformat = \"json\"\n\n[cloud]");
    let proxy = Proxy::start(&text, dir.path(), "info").await;
    let resp = common::client()
        .get(format!("{}/api/incidents", proxy.base))
        .header("client-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (code, logs) = proxy.terminate();
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["request_id"] == "abc-123")
        .expect("an access line");
    assert_eq!(access["route"], "defender");
    assert_eq!(access["status"], 200);
    assert_eq!(access["tenant"], "home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workers_access_lines_are_written_while_it_runs() {
    // Worker threads keep their log lines and write them out together when they go idle:
    // none may wait for the exit, and none may be lost.
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"")
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"\nworkers = 4"),
            1,
        )
        .replace("[cloud]", "[log]\nformat = \"json\"\n\n[cloud]");
    let config = write_config(dir.path(), &text);
    let log_path = dir.path().join("proxy.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(listening(port).await, "the proxy did not start");
    // Sixteen clients at once, each on a connection of its own: they spread over the workers.
    let sent: Vec<_> = (0..16)
        .map(|i| {
            let url = format!("{base}/api/incidents");
            tokio::spawn(async move {
                common::client()
                    .get(url)
                    .header("client-request-id", format!("worker-line-{i}"))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    for s in sent {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    let logged = |logs: &str| {
        (0..16)
            .filter(|i| logs.contains(&format!("\"worker-line-{i}\"")))
            .count()
    };
    let mut seen = 0;
    for _ in 0..100 {
        seen = logged(&std::fs::read_to_string(&log_path).unwrap());
        if seen == 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen, 16,
        "every access line is written while the proxy runs"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logs = std::fs::read_to_string(&log_path).unwrap();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("whole lines, never two mixed: {line}"));
    }
    assert_eq!(logged(&logs), 16);
}

#[tokio::test]
async fn the_health_command_probes_the_admin_listener() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let text = config_text(&sb.url(), &Setup::default()).replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"127.0.0.1:{admin_port}\""),
    );
    let proxy = Proxy::start(&text, dir.path(), "warn").await;
    let health = |port: u16| {
        Command::new(BIN)
            .args([
                "health",
                "--url",
                &format!("http://127.0.0.1:{port}/healthz"),
            ])
            .output()
            .unwrap()
            .status
            .code()
    };
    let mut ok = None;
    for _ in 0..100 {
        ok = health(admin_port);
        if ok == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(ok, Some(0));
    assert_eq!(health(free_port()), Some(1));
    let (code, _) = proxy.terminate();
    assert_eq!(code, 0);
}

#[tokio::test]
async fn sigterm_drains_a_slow_request_and_a_long_download_then_exits_zero() {
    drains_then_exits_zero("", &[]).await;
}

#[tokio::test]
async fn per_core_threads_serve_and_drain_like_the_multi_thread_runtime() {
    drains_then_exits_zero(
        "runtime = \"per-core\"\nworkers = 2",
        &["dp-core-0", "dp-core-1"],
    )
    .await;
}

/// Serves a slow request and a long download with `server_lines` in `[server]`, checks that
/// the process has `threads` (by name), then SIGTERM: no new connections, both finish, exit 0.
async fn drains_then_exits_zero(server_lines: &str, threads: &[&str]) {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"")
        .replacen("[server]", &format!("[server]\n{server_lines}"), 1);
    let proxy = Proxy::start(&text, dir.path(), "info").await;
    // The port is bound before the serving threads start: wait for them (up to 10 s).
    let mut names = Vec::new();
    for _ in 0..500 {
        names = common::thread_names(&proxy.child.id().to_string());
        if threads.iter().all(|t| names.iter().any(|n| n == t)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in threads {
        assert!(names.iter().any(|n| n == t), "no thread {t} in {names:?}");
    }
    let http = common::client();
    let slow = tokio::spawn(
        http.get(format!("{}/api/_test/slow?millis=1500", proxy.base))
            .send(),
    );
    let n: u64 = 256 << 20;
    let mut download = http
        .get(format!("{}/api/_test/download?bytes={n}", proxy.base))
        .send()
        .await
        .unwrap();
    let first = download.chunk().await.unwrap().unwrap().len() as u64;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let port = proxy.base.rsplit(':').next().unwrap().to_string();
    assert!(
        tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .is_err(),
        "still accepting after SIGTERM"
    );
    let mut total = first;
    while let Some(chunk) = download.chunk().await.unwrap() {
        total += chunk.len() as u64;
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    assert_eq!(total, n, "the download finished");
    assert_eq!(
        slow.await.unwrap().unwrap().status(),
        200,
        "the slow request finished"
    );
    let (code, logs) = proxy.terminate();
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("draining"), "{logs}");
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    let proxy = Proxy::start(&text, dir.path(), "info").await;
    let http = common::client();
    let pinned = format!("{}/contoso/api/incidents?$top=1", proxy.base);
    assert_eq!(http.get(&pinned).send().await.unwrap().status(), 404);
    let config = dir.path().join("proxy.toml");
    let mut current = std::fs::read_to_string(&config).unwrap();
    current.push_str(&format!(
        "\n[[route]]\nname = \"contoso\"\nprefix = \"/contoso/\"\nstrip_prefix = true\nupstream = \"{}\"\nscope = \"https://api.security.microsoft.com/.default\"\ncredential = \"app\"\ntenant = \"contoso\"\n",
        sb.url()
    ));
    std::fs::write(&config, current).unwrap();
    Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    let mut status = 0;
    for _ in 0..40 {
        status = http.get(&pinned).send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (code, logs) = proxy.terminate();
    assert_eq!(status, 200, "{logs}");
    assert!(logs.contains("SIGHUP"), "{logs}");
    assert_eq!(code, 0);
}

#[test]
fn consent_url_prints_one_admin_consent_link_per_customer_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text("https://login.microsoftonline.com", &Setup::default()).replace(
        "upstream = \"https://login.microsoftonline.com\"",
        "upstream = \"https://api.security.microsoft.com\"",
    );
    let config = write_config(
        dir.path(),
        &text.replace("contoso = ", "any = \"*\"\ncontoso = "),
    );
    let out = Command::new(BIN)
        .args(["consent-url", "--credential", "app", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "contoso ({b}): https://login.microsoftonline.com/{b}/adminconsent?client_id={c}",
        b = sandbox::TENANT_B,
        c = sandbox::DEFAULT_CLIENT_ID
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(stdout.contains("any organization (organizations): https://login.microsoftonline.com/organizations/adminconsent?client_id="), "{stdout}");
    let out = Command::new(BIN)
        .args(["consent-url", "--credential", "nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_live_fetches_a_token_per_tenant_and_scope_and_explains_refusals() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &config_text(&sb.url(), &Setup::default()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--live", "--config"])
            .arg(good)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_end().ends_with(" ok"))
            .count(),
        4,
        "2 tenants x 2 scopes:\n{stdout}"
    );
    assert_eq!(sb.token_requests(), 4);
    let bad = write_config(
        dir.path(),
        &config_text(
            &sb.url(),
            &Setup {
                secret: Some("wrong-secret-42".into()),
                ..Setup::default()
            },
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--live", "--config"])
            .arg(bad)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: AADSTS7000215 (invalid_client): the client secret is wrong"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrong-secret-42"));
}

#[tokio::test]
async fn the_password_type_warns_at_start_and_never_logs_the_password() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"")
        .replace("type = \"client_secret\"", "type = \"password\"")
        .replace(
            "client_secret = \"sandbox-secret\"",
            "username = \"analyst@contoso.test\"\npassword = \"Pa55-word-never-logged\"",
        )
        .replace(
            &format!(
                "[credentials.app.tenants]\ncontoso = \"{}\"\n",
                sandbox::TENANT_B
            ),
            "",
        );
    let proxy = Proxy::start(&text, dir.path(), "trace").await;
    let _ = common::client()
        .get(format!("{}/api/incidents", proxy.base))
        .send()
        .await
        .unwrap();
    let (code, logs) = proxy.terminate();
    assert_eq!(code, 0);
    assert_eq!(
        logs.matches("(ROPC) fails for users with multi-factor authentication")
            .count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("Pa55-word-never-logged"));
}

/// Blocking work that never returns (here, the read of a workload-identity token file that is
/// a FIFO nobody writes to) does not keep the process from exiting after the drain.
#[tokio::test]
async fn a_file_read_that_never_returns_does_not_hold_the_exit() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let text = config_text(&sb.url(), &Setup::default())
        .replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 1")
        .replace("type = \"client_secret\"", "type = \"workload_identity\"")
        .replace(
            &format!("client_secret = \"{}\"", sandbox::DEFAULT_CLIENT_SECRET),
            &format!("token_file = \"{}\"", fifo.display()),
        );
    let proxy = Proxy::start(&text, dir.path(), "info").await;
    let pid = proxy.child.id().to_string();
    let stuck = tokio::spawn(
        common::client()
            .get(format!("{}/api/incidents", proxy.base))
            .send(),
    );
    // The token fetch is now blocked reading the FIFO.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || proxy.terminate()),
    )
    .await;
    let took = started.elapsed();
    let Ok(exit) = exit else {
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        panic!("still running 10 s after SIGTERM");
    };
    let (code, logs) = exit.unwrap();
    assert_eq!(code, 0, "{logs}");
    // The grace period (1 s) for the stuck request, then 1 s for blocking work.
    assert!(took < Duration::from_secs(4), "exit took {took:?}: {logs}");
    stuck.abort();
}
