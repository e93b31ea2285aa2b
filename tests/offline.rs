//! "Test your scripts offline" (README): the real binary's `demo` runs a config against the
//! sandbox while a Python `requests` script pages, is throttled and loses its token; `sandbox`
//! prints a `proxy.toml` snippet that `check --live` passes with.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::binary::{BIN, write_config};
use common::python::python_path;
use defender_proxy::demo::{SHIPPED_CONFIG, SNIPPET_END, SNIPPET_START};

/// A child process whose stdout lines arrive on a channel; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: String,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Everything printed up to and including the first line that starts with `marker`.
    fn until(&mut self, marker: &str) -> &str {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.starts_with(marker) {
                        return &self.seen;
                    }
                }
                Err(_) => panic!("no line starting {marker:?}; printed:\n{}", self.seen),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL after `label` on a banner line such as `  proxy    http://127.0.0.1:8080`.
fn address(banner: &str, label: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label} in:\n{banner}"))
        .to_owned()
}

fn run_script(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .env("PYTHONPATH", python_path())
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The shipped config on free ports, with an app of its own instead of the variables.
fn test_config() -> String {
    SHIPPED_CONFIG
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace("${AZURE_TENANT_ID}", "33333333-3333-3333-3333-333333333333")
        .replace("${AZURE_CLIENT_ID}", "44444444-4444-4444-4444-444444444444")
        .replace("${AZURE_CLIENT_SECRET}", "a-ci-secret")
}

#[test]
fn a_script_pages_and_survives_a_throttle_and_a_token_fault_against_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &test_config());
    let mut demo = Running::start(
        Command::new(BIN)
            .args(["demo", "--sandbox-listen", "127.0.0.1:0", "--config"])
            .arg(&config),
    );
    let banner = demo.until("Press Ctrl-C").to_owned();
    let proxy = address(&banner, "proxy");
    let sandbox = address(&banner, "sandbox");
    let admin = address(&banner, "admin");
    assert!(banner.contains("/graph/"), "{banner}");

    let out = run_script("offline_ci.py", &[&proxy, &sandbox]);
    assert_eq!(
        out.trim(),
        "incidents=120 alerts=300 machines=80 again=120",
        "every page, after the faults too"
    );
    let health = Command::new(BIN)
        .args(["health", "--url", &format!("{admin}/healthz")])
        .status()
        .unwrap();
    assert!(
        health.success(),
        "the demo's admin listener is the config's"
    );
}

#[test]
fn check_live_passes_with_the_snippet_the_sandbox_prints() {
    let mut sandbox = Running::start(Command::new(BIN).args([
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "7",
    ]));
    let printed = sandbox.until(SNIPPET_END).to_owned();
    let snippet = printed
        .split_once(SNIPPET_START)
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split_once(SNIPPET_END))
        .map(|(snippet, _)| snippet)
        .unwrap_or_else(|| panic!("no snippet in:\n{printed}"));
    assert!(
        printed.contains("client secret  sandbox-secret"),
        "{printed}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), snippet);
    let out = Command::new(BIN)
        .args(["check", "--live", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.matches(" ok").count() >= 6, "{stdout}");
}

/// A config with one route per credential kind the sandbox can play, none of them its own app.
fn every_kind_config(dir: &Path) -> String {
    let token_file = dir.join("federated-token");
    std::fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.a-service-account-token.sig\n",
    )
    .unwrap();
    let cert = common::fixture("test-only-combined1.pem");
    let route = |name: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nprefix = \"/{name}/\"\nstrip_prefix = true\n\
             upstream = \"xdr\"\ncredential = \"{name}\"\n\n"
        )
    };
    let routes: String = ["secret", "cert", "wi", "mi", "user", "ropc"]
        .map(route)
        .concat();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[credentials.secret]
type = "client_secret"
tenant_id = "55555555-5555-5555-5555-555555555555"
client_id = "66666666-6666-6666-6666-666666666661"
client_secret = "secret-of-this-app"

[credentials.cert]
type = "client_certificate"
tenant_id = "55555555-5555-5555-5555-555555555555"
client_id = "66666666-6666-6666-6666-666666666662"
certificate = "{cert}"

[credentials.wi]
type = "workload_identity"
tenant_id = "55555555-5555-5555-5555-555555555555"
client_id = "66666666-6666-6666-6666-666666666663"
token_file = "{token_file}"

[credentials.mi]
type = "managed_identity"
client_id = "66666666-6666-6666-6666-666666666664"

[credentials.user]
type = "device_code"
tenant_id = "55555555-5555-5555-5555-555555555555"
client_id = "66666666-6666-6666-6666-666666666665"
token_store = "{store}"

[credentials.ropc]
type = "password"
tenant_id = "55555555-5555-5555-5555-555555555555"
client_id = "66666666-6666-6666-6666-666666666666"
username = "analyst@contoso.com"
password = "a-password"

{routes}"#,
        cert = cert.display(),
        token_file = token_file.display(),
        store = dir.join("user-login.json").display(),
    )
}

#[tokio::test]
async fn every_credential_kind_the_sandbox_plays_works_in_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &every_kind_config(dir.path()));
    let mut demo = Running::start(
        Command::new(BIN)
            .args(["demo", "--sandbox-listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env_remove("IDENTITY_ENDPOINT")
            .env_remove("IDENTITY_HEADER"),
    );
    let banner = demo.until("Press Ctrl-C").to_owned();
    let proxy = address(&banner, "proxy");
    let http = common::client();
    for name in ["secret", "cert", "wi", "mi", "user", "ropc"] {
        let resp = http
            .get(format!("{proxy}/{name}/api/incidents?$top=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{name}: {}",
            resp.text().await.unwrap()
        );
        let body = common::json(resp).await;
        assert_eq!(body["value"].as_array().map(Vec::len), Some(1), "{name}");
    }
    assert!(
        !dir.path().join("user-login.json").exists(),
        "the demo signs in into a store of its own"
    );
}
