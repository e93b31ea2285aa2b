//! A small load generator for `bench/run.sh`, for what wrk cannot measure:
//!
//! ```text
//! loadgen burst URL N            N requests at once, each on its own connection: time to the last answer
//! loadgen startup URL -- CMD...  starts CMD and times until URL first answers 200, then stops CMD
//! loadgen rate URL RPS SECS      RPS requests a second for SECS, open loop (a late answer never
//!                                delays the next request), each on its own connection: achieved
//!                                rate and latency percentiles
//! loadgen tenants URL N C        N requests, each naming another tenant (`x-tenant-id`), C at a time
//! ```
//!
//! Both print one line of `key=value` pairs for the script to read.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A client that opens a new connection for every request.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

async fn burst(url: &str, n: usize) {
    let http = client();
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (http.clone(), url.to_string());
            tokio::spawn(async move {
                match http.get(url).send().await {
                    Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    println!(
        "requests={n} ok={ok} failed={} ms_to_last={}",
        n - ok,
        started.elapsed().as_millis()
    );
}

async fn startup(url: &str, cmd: &[String]) {
    let http = client();
    let started = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the command starts");
    let ms = loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().as_u16() == 200 {
                break Some(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if started.elapsed() > Duration::from_secs(20) || matches!(child.try_wait(), Ok(Some(_))) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    match ms {
        Some(ms) => println!("ms_to_first_answer={ms:.1}"),
        None => {
            println!("ms_to_first_answer=none");
            std::process::exit(1);
        }
    }
}

async fn rate(url: &str, rps: u64, secs: u64) {
    let http = client();
    let total = rps * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rps.max(1));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let (http, url) = (http.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = match http.get(url).send().await {
                Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (ok, sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((true, d)) => latencies.push(d),
            _ => failed += 1,
        }
    }
    let took = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "requests={total} ok={} failed={failed} rps={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        latencies.len(),
        latencies.len() as f64 / took,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}

async fn tenants(url: &str, n: usize, concurrency: usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, next) = (http.clone(), url.to_string(), next.clone());
            tokio::spawn(async move {
                let mut ok = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break ok;
                    }
                    let tenant = format!("00000000-0000-0000-0000-{i:012}");
                    let served = match http.get(&url).header("x-tenant-id", tenant).send().await {
                        Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    ok += usize::from(served);
                }
            })
        })
        .collect();
    let mut ok = 0;
    for w in workers {
        ok += w.await.unwrap_or(0);
    }
    println!(
        "requests={n} ok={ok} failed={} ms={}",
        n - ok,
        started.elapsed().as_millis()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["burst", url, n] => burst(url, n.parse().expect("N is a number")).await,
        ["startup", url, "--", ..] => startup(url, &args[3..]).await,
        ["rate", url, rps, secs] => {
            rate(
                url,
                rps.parse().expect("RPS is a number"),
                secs.parse().expect("SECS is a number"),
            )
            .await
        }
        ["tenants", url, n, c] => {
            let n = n.parse().expect("N is a number");
            tenants(url, n, c.parse().expect("C is a number")).await
        }
        _ => {
            eprintln!(
                "usage: loadgen burst URL N | loadgen startup URL -- CMD [ARGS...] | loadgen tenants URL N C | loadgen rate URL RPS SECS"
            );
            std::process::exit(64);
        }
    }
}
