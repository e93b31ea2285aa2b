//! What the binary says when something is wrong, run as a new user would: each message names
//! what is wrong and what to change, with exit code 64 for a bad config or usage and 1 for
//! anything else (issue 26, "Errors that say what to do").

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::binary::{BIN, Proxy, write_config};
use common::{Setup, config_text};
use defender_sandbox as sandbox;

fn run(args: &[&str], config: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DEFENDER_PROXY_CONFIG")
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    outcome(cmd.output().unwrap())
}

fn outcome(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn test_config() -> String {
    config_text("http://127.0.0.1:1", &Setup::default())
}

#[test]
fn a_port_in_use_names_the_listener_its_address_and_the_key_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (listen, admin, key, listener) in [
        (addr.as_str(), "127.0.0.1:0", "server.listen", "proxy"),
        ("127.0.0.1:0", addr.as_str(), "server.admin_listen", "admin"),
    ] {
        let text = test_config()
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{listen}\""),
            )
            .replace(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{admin}\""),
            );
        let config = write_config(dir.path(), &text);
        let (code, _, err) = run(&["run"], Some(&config));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("cannot open the {listener} listener on {addr}")),
            "{err}"
        );
        assert!(
            err.contains(&format!("set {key} to another address")),
            "{err}"
        );
        assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
        assert!(!err.contains("serving"), "{err}");
    }
    let (code, _, err) = run(&["demo", "--listen", &addr], None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot open the proxy listener on {addr}")),
        "{err}"
    );
    assert!(err.contains("set --listen to another address"), "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[test]
fn a_missing_config_says_how_to_name_one_or_start_from_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .current_dir(dir.path())
        .env_remove("DEFENDER_PROXY_CONFIG")
        .output()
        .unwrap();
    let (code, _, err) = outcome(out);
    assert_eq!(code, 64, "{err}");
    for needle in [
        "cannot read proxy.toml",
        "--config PATH",
        "DEFENDER_PROXY_CONFIG",
        "copy proxy.toml from the defender-proxy sources",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in {err}");
    }
}

#[test]
fn every_unset_variable_is_reported_in_one_run() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let (code, _, err) = run(&["check"], Some(&shipped));
    assert_eq!(code, 64, "{err}");
    for name in ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"] {
        assert!(
            err.contains(&format!("environment variable {name} is not set")),
            "{name} missing in {err}"
        );
    }
}

#[test]
fn a_config_without_routes_is_refused_with_64() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "[server]\nlisten = \"127.0.0.1:8080\"\n"] {
        let (code, out, err) = run(&["check"], Some(&write_config(dir.path(), text)));
        assert_eq!(code, 64, "{out}{err}");
        assert!(err.contains("route: the config defines no route"), "{err}");
        assert!(!out.contains("OK"), "{out}");
    }
}

#[test]
fn a_duplicate_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config().replace(
        "shutdown_grace_secs = 5",
        "shutdown_grace_secs = 5\nshutdown_grace_secs = 6",
    );
    let (code, _, err) = run(&["check"], Some(&write_config(dir.path(), &text)));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("line 6, column 1: duplicate key `shutdown_grace_secs` in [server]"),
        "{err}"
    );
}

#[test]
fn a_route_error_names_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config().replace(
        "strip_prefix = true",
        "strip_prefix = true\nrate_limit = \"mde-limit\"",
    );
    let (code, _, err) = run(&["check"], Some(&write_config(dir.path(), &text)));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("route[1].rate_limit: no rate_limit named \"mde-limit\" (route \"mde\")"),
        "{err}"
    );
}

#[test]
fn login_on_an_app_credential_names_its_type_and_what_login_is_for() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &test_config());
    let (code, _, err) = run(&["login", "--credential", "app"], Some(&config));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("credential \"app\" is of type \"client_secret\", which needs no sign-in"),
        "{err}"
    );
    assert!(
        err.contains("for a device_code credential (user context)"),
        "{err}"
    );
    assert!(err.contains("this config has none"), "{err}");
    let (code, _, err) = run(&["login", "--credential", "nope"], Some(&config));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no credential named \"nope\""), "{err}");
}

#[test]
fn consent_url_refuses_an_unknown_tenant_and_encodes_the_ones_it_takes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &test_config());
    for typo in ["contosso", "contoso corp", "a/b?c"] {
        let (code, out, err) = run(
            &["consent-url", "--credential", "app", "--tenant", typo],
            Some(&config),
        );
        assert_eq!(code, 64, "{typo}: {out}{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("known aliases: contoso"), "{err}");
    }
    let (code, out, _) = run(
        &["consent-url", "--credential", "app", "--tenant", "CONTOSO"],
        Some(&config),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("/{}/adminconsent?client_id=", sandbox::TENANT_B)),
        "{out}"
    );
    let (code, out, _) = run(
        &[
            "consent-url",
            "--credential",
            "app",
            "--tenant",
            "fabrikam.onmicrosoft.com",
        ],
        Some(&config),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("/fabrikam.onmicrosoft.com/adminconsent?"),
        "{out}"
    );
    let odd = test_config().replace(
        &format!("client_id = \"{}\"", sandbox::DEFAULT_CLIENT_ID),
        "client_id = \"a b&c\"",
    );
    let (code, out, err) = run(
        &["consent-url", "--credential", "app"],
        Some(&write_config(dir.path(), &odd)),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("adminconsent?client_id=a%20b%26c"), "{out}");
}

#[tokio::test]
async fn the_serving_line_shows_plain_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&test_config(), dir.path(), "info").await;
    let (code, logs) = proxy.terminate();
    assert_eq!(code, 0, "{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("defender-proxy serving"))
        .unwrap_or_else(|| panic!("no serving line in {logs}"));
    assert!(line.contains("listen=127.0.0.1:"), "{line}");
    assert!(line.contains("admin=127.0.0.1:"), "{line}");
    assert!(!line.contains("Some("), "{line}");
}

#[test]
fn serving_is_not_logged_when_a_secret_file_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config().replace(
        &format!("client_secret = \"{}\"", sandbox::DEFAULT_CLIENT_SECRET),
        "client_secret_file = \"missing-secret\"",
    );
    let (code, _, err) = run(&["run"], Some(&write_config(dir.path(), &text)));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("credentials.app.client_secret_file: cannot read"),
        "{err}"
    );
    assert!(!err.contains("serving"), "{err}");
}

#[test]
fn check_shows_no_secret_for_a_managed_identity() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[credentials.app]\ntype = \"managed_identity\"\n\n[[route]]\nname = \"defender\"\nprefix = \"/\"\nupstream = \"xdr\"\ncredential = \"app\"\n";
    let (code, out, err) = run(&["check"], Some(&write_config(dir.path(), text)));
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("managed_identity"))
        .unwrap();
    assert!(!line.contains("secret"), "{line}");
    let (code, out, _) = run(&["check"], Some(&write_config(dir.path(), &test_config())));
    assert_eq!(code, 0);
    assert!(out.contains("secret=*** (config/env)"), "{out}");
}

#[test]
fn config_is_offered_only_by_the_commands_that_read_one() {
    for sub in ["run", "check", "login", "consent-url", "demo"] {
        let (code, out, _) = run(&[sub, "--help"], None);
        assert_eq!(code, 0);
        assert!(out.contains("--config <PATH>"), "{sub} --help: {out}");
    }
    for sub in ["sandbox", "health"] {
        let (code, out, _) = run(&[sub, "--help"], None);
        assert_eq!(code, 0);
        assert!(!out.contains("--config"), "{sub} --help: {out}");
        let (code, _, err) = run(&["--config", "proxy.toml", sub, "--help"], None);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(&["--config", "proxy.toml", sub], None);
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("--config: is not used by health or sandbox"),
            "{err}"
        );
    }
}
