//! The summary: requests by outcome and cause, latency, faults, tokens, what the sandbox
//! refused, RSS drift, and the verdict.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::faults::Episode;
use crate::load::{Outcome, Record};

/// Seconds of samples whose median is the starting and the ending RSS.
const RSS_WINDOW_SECS: f64 = 30.0;

/// Everything the run observed.
pub struct Summary {
    pub secs: u64,
    pub warmup: u64,
    pub seed: u64,
    pub records: Vec<Record>,
    pub episodes: Vec<Episode>,
    /// `(seconds, VmRSS KiB)`.
    pub rss: Vec<(f64, u64)>,
    pub peak_kib: Option<u64>,
    pub died_at: Option<f64>,
    pub exit_ok: bool,
    /// `/_sandbox/stats`.
    pub sandbox: Value,
    /// The proxy's `/metrics` text.
    pub metrics: String,
    pub rss_pct: f64,
    pub rss_mib: f64,
    /// The proxy's log.
    pub log: std::path::PathBuf,
}

/// `/_sandbox/stats`.
pub async fn sandbox_stats(sandbox: &str) -> reqwest::Result<Value> {
    let url = format!("{sandbox}/_sandbox/stats");
    crate::http().get(url).send().await?.json().await
}

/// The proxy's `/metrics` text.
pub async fn proxy_metrics(admin: &str) -> reqwest::Result<String> {
    crate::http()
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .text()
        .await
}

impl Summary {
    /// Prints the summary; true when the run passed.
    pub fn print(&self) -> bool {
        let mut failures = Vec::new();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
        println!(
            "\n== defender-proxy soak: {} s (warm-up {} s), seed {}, {} cores, load average at the end {} ==",
            self.secs,
            self.warmup,
            self.seed,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg.join(" ")
        );
        let unexplained = self.print_requests();
        if !unexplained.is_empty() {
            failures.push(format!(
                "{} failures no injected fault explains",
                unexplained.len()
            ));
        }
        self.print_latency();
        self.print_faults();
        self.print_upstream_failures();
        failures.extend(self.print_tokens());
        failures.extend(self.print_rss());
        match (self.died_at, self.exit_ok) {
            (Some(at), _) => {
                println!("proxy        DIED about {at:.0} s into the run");
                failures.push("the proxy died".into());
            }
            (None, true) => println!("proxy        alive throughout; exited 0 after SIGTERM"),
            (None, false) => {
                println!("proxy        alive throughout; did NOT exit 0 after SIGTERM");
                failures.push("no clean exit after SIGTERM".into());
            }
        }
        if self.records.iter().all(|r| r.outcome != Outcome::Ok) {
            failures.push("no request succeeded".into());
        }
        for r in unexplained.iter().take(10) {
            println!(
                "  unexplained: {:7.1}-{:7.1} s  {:<12} {}",
                r.start, r.end, r.op, r.outcome
            );
        }
        if failures.is_empty() {
            println!("VERDICT      PASS");
        } else {
            println!("VERDICT      FAIL: {}", failures.join("; "));
        }
        failures.is_empty()
    }

    /// Totals and failures by cause; returns the failures neither an injected fault nor the
    /// client's going over quota explains.
    fn print_requests(&self) -> Vec<&Record> {
        let failed: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.outcome != Outcome::Ok)
            .collect();
        let by_fault = |r: &Record| self.episodes.iter().any(|e| e.explains(r));
        let mut causes: BTreeMap<&Outcome, [usize; 4]> = BTreeMap::new();
        let mut unexplained = Vec::new();
        for r in &failed {
            let n = causes.entry(&r.outcome).or_default();
            n[0] += 1;
            if by_fault(r) {
                n[1] += 1;
            } else if r.over_quota() {
                n[2] += 1;
            } else {
                n[3] += 1;
                unexplained.push(*r);
            }
        }
        let total = |i: usize| causes.values().map(|n| n[i]).sum::<usize>();
        println!(
            "requests     sent {} ({:.0}/s), succeeded {}, failed {}: explained by an injected fault {}, client over quota {}, unexplained {}",
            self.records.len(),
            self.records.len() as f64 / self.secs as f64,
            self.records.len() - failed.len(),
            failed.len(),
            total(1),
            total(2),
            total(3)
        );
        for (outcome, [n, fault, quota, bad]) in &causes {
            println!(
                "  failed {n:6}  {outcome:<32} fault {fault}, over quota {quota}, unexplained {bad}"
            );
        }
        unexplained
    }

    fn print_latency(&self) {
        let all: Vec<f64> = self.records.iter().map(|r| r.end - r.start).collect();
        let (p50, p99) = percentiles(all);
        println!(
            "latency      all requests: p50 {:.1} ms, p99 {:.1} ms",
            p50 * 1e3,
            p99 * 1e3
        );
        let mut ops: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in &self.records {
            ops.entry(r.op).or_default().push(r);
        }
        println!(
            "  {:<13} {:>7} {:>7} {:>7} {:>9} {:>9}",
            "op", "sent", "ok", "failed", "p50 ms", "p99 ms"
        );
        for (op, rs) in ops {
            let ok = rs.iter().filter(|r| r.outcome == Outcome::Ok).count();
            let (p50, p99) = percentiles(rs.iter().map(|r| r.end - r.start).collect());
            println!(
                "  {op:<13} {:>7} {ok:>7} {:>7} {:>9.1} {:>9.1}",
                rs.len(),
                rs.len() - ok,
                p50 * 1e3,
                p99 * 1e3
            );
        }
    }

    fn print_faults(&self) {
        println!("faults       {} injected:", self.episodes.len());
        for e in &self.episodes {
            let hits = self.records.iter().filter(|r| e.explains(r)).count();
            println!(
                "  {:6.1}-{:6.1} s  {:<52} failures explained {hits}",
                e.start,
                e.end,
                e.label()
            );
        }
    }

    /// Why the proxy's upstream requests failed, from its log (`defender_proxy::forward` debug).
    fn print_upstream_failures(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for line in log
            .lines()
            .filter(|l| l.contains("upstream request failed"))
        {
            let reason = line.split_once(" source=").map_or(line, |(_, r)| r);
            *reasons.entry(reason).or_default() += 1;
        }
        println!(
            "upstream     failed requests in the proxy's log ({}):",
            self.log.display()
        );
        if reasons.is_empty() {
            println!("  none");
        }
        for (reason, n) in reasons {
            println!("  {n:6}  {reason}");
        }
    }

    /// Token counts from both sides; failures for tokens the API should never have seen.
    fn print_tokens(&self) -> Vec<String> {
        let fetches = metric_by_label(
            &self.metrics,
            "defender_proxy_token_fetches_total",
            "outcome",
        );
        let fetches: Vec<String> = fetches.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let refreshes = metric_sum(&self.metrics, "defender_proxy_token_refreshes_total");
        println!(
            "tokens       proxy fetches: {}; background refreshes {refreshes}; token endpoint requests seen by the sandbox {}",
            fetches.join(", "),
            self.sandbox["token_requests"]
        );
        let limits: Vec<String> = ["queued", "absorbed", "refused", "upstream_throttled"]
            .iter()
            .map(|k| {
                let name = format!("defender_proxy_ratelimit_{k}_total");
                format!("{k} {}", metric_sum(&self.metrics, &name))
            })
            .collect();
        println!("rate limits  {}", limits.join(", "));
        let refused = self.sandbox["rejected_tokens"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let shown: Vec<String> = refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "sandbox      API requests {}; bearer tokens refused: {}",
            self.sandbox["api_requests"],
            shown.join(", ")
        );
        let mut failures: Vec<String> = refused
            .iter()
            .filter(|(k, v)| k.as_str() != "revoked" && v.as_u64() != Some(0))
            .map(|(k, v)| format!("the API saw {v} {k} token(s)"))
            .collect();
        if refused.is_empty() {
            failures.push("no rejected_tokens in /_sandbox/stats".into());
        }
        failures
    }

    /// Start (after warm-up), peak, end and drift; a failure when it drifted too far.
    fn print_rss(&self) -> Option<String> {
        let mib = |kib: f64| kib / 1024.0;
        let warm = self.warmup as f64;
        let end_from = (self.secs as f64 - RSS_WINDOW_SECS).max(warm);
        let start = median(&self.rss, warm, warm + RSS_WINDOW_SECS)?;
        let end = median(&self.rss, end_from, f64::MAX)?;
        let peak = self.rss.iter().map(|s| s.1).max().unwrap_or(0) as f64;
        let drift = end - start;
        let pct = drift / start * 100.0;
        let slope = slope_kib_per_hour(&self.rss, warm);
        println!(
            "rss MiB      start {:.1} (median {warm:.0}-{:.0} s), peak {:.1} sampled / {:.1} VmHWM, end {:.1} (median {end_from:.0}-{} s), drift {:+.1} MiB ({pct:+.1}%; fails over both {}% and {} MiB), trend {:+.1} MiB/h",
            mib(start),
            warm + RSS_WINDOW_SECS,
            mib(peak),
            mib(self.peak_kib.unwrap_or(0) as f64),
            mib(end),
            self.secs,
            mib(drift),
            self.rss_pct,
            self.rss_mib,
            mib(slope)
        );
        let over = pct > self.rss_pct && mib(drift) > self.rss_mib;
        over.then(|| {
            format!(
                "RSS drifted {:+.1} MiB ({pct:+.1}%), over both {}% and {} MiB",
                mib(drift),
                self.rss_pct,
                self.rss_mib
            )
        })
    }
}

/// p50 and p99 in the unit given.
fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Median KiB of the samples taken in `[from, to)`.
fn median(samples: &[(f64, u64)], from: f64, to: f64) -> Option<f64> {
    let mut v: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| (from..to).contains(t))
        .map(|s| s.1)
        .collect();
    v.sort_unstable();
    v.get(v.len() / 2).map(|k| *k as f64)
}

/// Least-squares slope of RSS after `from`, in KiB per hour.
fn slope_kib_per_hour(samples: &[(f64, u64)], from: f64) -> f64 {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from)
        .map(|(t, k)| (*t, *k as f64))
        .collect();
    let n = pts.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = pts.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var * 3600.0 }
}

/// Sum of a counter family over all its series.
fn metric_sum(text: &str, name: &str) -> u64 {
    series(text, name).map(|(_, v)| v).sum()
}

/// A counter family summed by the value of one label.
fn metric_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let key = format!("{label}=\"");
    for (labels, v) in series(text, name) {
        let value = labels
            .split_once(&key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(v, _)| v);
        *out.entry(value.to_owned()).or_default() += v;
    }
    out
}

/// `(labels, value)` of each series of a family in Prometheus text.
fn series<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = rest.rsplit_once(' ')?;
        let labels_ok = labels.is_empty() || labels.starts_with('{');
        let value = value.parse::<f64>().ok()?;
        labels_ok.then_some((labels, value as u64))
    })
}
