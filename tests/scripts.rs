//! Scripts written for the real API work unchanged through the proxy: a Python `requests`
//! script that pages with `@odata.nextLink` (in one tenant, and through two without ever
//! crossing between them), and one that loops past the API's rate limit without any 429
//! handling. `requests` is installed under `target/` when missing.

mod common;

use std::path::Path;
use std::process::Command;

use common::python::{python_path, python_path_for};
use common::{Setup, start_edited};
use defender_sandbox::{self as sandbox, SandboxOptions};

fn run_script(script: &str, args: &[&str]) -> String {
    run_script_with(script, args, &python_path())
}

fn run_script_with(script: &str, args: &[&str], python_path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .env("PYTHONPATH", python_path)
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

/// Issue 22: the header on the first page only, the links carry the tenant, and no page of
/// one tenant holds another tenant's items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paging_script_never_crosses_tenants() {
    let env = common::start(Setup::default()).await;
    let base = env.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_script("page_two_tenants.py", &[&base, "contoso", "home"])
    })
    .await
    .unwrap();
    let want = SandboxOptions::default().incidents_per_tenant;
    let pages = want.div_ceil(7);
    assert_eq!(
        out.trim(),
        format!(
            "contoso: tenant={} pages={pages} items={want}\nhome: tenant={} pages={pages} items={want}",
            sandbox::TENANT_B,
            sandbox::TENANT_A
        )
    );
}

/// The same with Microsoft's Graph SDK for Python, whose `PageIterator` follows
/// `@odata.nextLink` without the headers of the first request: the user saw it mix
/// two customers' incidents in one list. `msgraph-sdk` is installed under `target/` (about
/// 450 MB) when missing; a failed install fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_sdk_page_iterator_never_crosses_tenants() {
    let env = common::start_edited(Setup::default(), |t| {
        let upstream = t
            .split("upstream = \"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let graph = format!(
            "[[route]]\nname = \"graph\"\nprefix = \"/graph/\"\nstrip_prefix = true\n\
             upstream = \"{upstream}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
             credential = \"app\"\n\n[[route]]\nname = \"mde\""
        );
        t.replace("[[route]]\nname = \"mde\"", &graph)
    })
    .await;
    let base = format!("{}/graph/v1.0", env.base);
    let out = tokio::task::spawn_blocking(move || {
        let path = python_path_for("msgraph_core", "msgraph-sdk", "target/python-msgraph");
        run_script_with("graph_page_iterator.py", &[&base, "contoso", "home"], &path)
    })
    .await
    .unwrap();
    let want = SandboxOptions::default().incidents_per_tenant;
    let pages = want.div_ceil(7);
    assert_eq!(
        out.trim(),
        format!(
            "contoso: tenant={} pages={pages} items={want}\nhome: tenant={} pages={pages} items={want}",
            sandbox::TENANT_B,
            sandbox::TENANT_A
        )
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
