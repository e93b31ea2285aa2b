//! A bounded soak test: the sandbox in this process, the release proxy as a child process,
//! several clients of mixed load through it, a fault injector, tokens that expire every
//! minute, and the proxy's RSS sampled throughout. Prints what was sent, what failed and why,
//! and exits 1 when a failure is not explained by an injected fault, the sandbox saw a token
//! it should never see, the proxy died or its memory drifted. Run it with `bench/soak.sh`.
#![forbid(unsafe_code)]

mod faults;
mod load;
mod proxy;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use defender_sandbox::{Sandbox, SandboxOptions};
use tokio::time::Instant;

/// Tokens live this long, so the proxy refreshes them every half minute and a token lost to a
/// revocation or a fault is fetched again within the minute.
const TOKEN_LIFETIME_SECS: u64 = 60;

#[derive(Parser)]
struct Args {
    /// The release binary to soak.
    #[arg(long)]
    bin: PathBuf,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Seconds before the starting RSS is taken (default: a tenth of the run, 10 to 60).
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// Where the proxy's config and log go.
    #[arg(long, default_value = "target/soak")]
    work: PathBuf,
    /// Seed of the load mix and the fault schedule (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The proxy's `server.runtime`: `multi-thread` or `per-core`.
    #[arg(long, default_value = "multi-thread")]
    runtime: String,
    /// Clients of downloads, uploads, echoes and slow requests.
    #[arg(long, default_value_t = 4)]
    bulk_clients: usize,
    /// RSS drift (end over start) that fails the run when it also exceeds --rss-mib.
    #[arg(long, default_value_t = 20.0)]
    rss_pct: f64,
    /// RSS drift in MiB that fails the run when it also exceeds --rss-pct.
    #[arg(long, default_value_t = 8.0)]
    rss_mib: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match soak(&args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A client for loopback: no environment proxy, no redirects followed.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a plain HTTP client builds")
}

async fn soak(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let secs = args.secs.max(30);
    let warmup = args.warmup_secs.unwrap_or((secs / 10).clamp(10, 60));
    let sandbox = Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        SandboxOptions {
            token_lifetime_secs: TOKEN_LIFETIME_SECS,
            ..SandboxOptions::default()
        },
    )
    .await?;
    std::fs::create_dir_all(&args.work)?;
    let mut proxy =
        proxy::Proxy::start(&args.bin, &args.work, &sandbox.url(), &args.runtime).await?;
    eprintln!(
        "soak: {secs} s, seed {seed}, proxy pid {} at {}, log {}",
        proxy.pid(),
        proxy.base,
        proxy.log.display()
    );

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let load = Arc::new(load::Load::new(&proxy.base, t0, deadline)?);
    let clients = load.clone().spawn_clients(seed, args.bulk_clients);
    let injector = faults::Injector::new(&sandbox.url(), t0);
    let schedule = tokio::spawn(injector.clone().run(seed, deadline));
    let rss = proxy.sample_rss_until(t0, deadline).await;
    for client in clients {
        client.await?;
    }
    schedule.await?;
    injector.clear().await;

    let sandbox_stats = report::sandbox_stats(&sandbox.url()).await?;
    let metrics = report::proxy_metrics(&proxy.admin)
        .await
        .unwrap_or_default();
    let proxy_log = proxy.log.clone();
    let exit = proxy.stop().await;
    let summary = report::Summary {
        secs,
        warmup,
        seed,
        records: load.take_records(),
        episodes: injector.episodes(),
        rss,
        peak_kib: exit.peak_kib,
        died_at: exit.died_at,
        exit_ok: exit.exit_ok,
        sandbox: sandbox_stats,
        metrics,
        rss_pct: args.rss_pct,
        rss_mib: args.rss_mib,
        log: proxy_log,
    };
    sandbox.shutdown();
    Ok(summary.print())
}
