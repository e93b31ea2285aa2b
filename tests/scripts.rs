//! Scripts written for the real API work unchanged through the proxy: a Python `requests`
//! script that pages with `@odata.nextLink`, and one that loops past the API's rate limit
//! without any 429 handling. `requests` is installed under `target/` when missing.

mod common;

use std::path::Path;
use std::process::Command;

use common::python::python_path;
use common::{Setup, start_edited};
use defender_sandbox::{self as sandbox, SandboxOptions};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paging_script_lists_every_incident_through_the_proxy() {
    let env = common::start(Setup::default()).await;
    let base = env.base.clone();
    let out =
        tokio::task::spawn_blocking(move || run_script("list_incidents.py", &[&base, "contoso"]))
            .await
            .unwrap();
    let want = SandboxOptions::default().incidents_per_tenant;
    assert_eq!(
        out.trim(),
        format!("incidents={want} tenants=['{}']", sandbox::TENANT_B)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_without_429_handling_loops_past_the_rate_limit() {
    let sandbox = SandboxOptions {
        mde_per_minute: 4,
        rate_window_secs: 2,
        ..SandboxOptions::default()
    };
    let setup = Setup {
        sandbox,
        extra: "[rate_limit.mde]\nper_minute = 1000\nmax_wait_secs = 10\n".into(),
        ..Setup::default()
    };
    let env = start_edited(setup, |t| {
        t.replace(
            "strip_prefix = true\n",
            "strip_prefix = true\nrate_limit = \"mde\"\n",
        )
    })
    .await;
    let base = env.base.clone();
    let out = tokio::task::spawn_blocking(move || run_script("loop_alerts.py", &[&base, "12"]))
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok=12");
    let text = env.metrics().await;
    let absorbed = text
        .lines()
        .find(|l| l.starts_with("defender_proxy_ratelimit_absorbed_total{limit=\"mde\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap();
    assert!(
        absorbed >= 1,
        "the sandbox throttled and the proxy absorbed it:\n{text}"
    );
}
