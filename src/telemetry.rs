//! Logging setup and the metrics registry: lock-free counters and histograms on the request
//! path, rendered in the Prometheus text format on `/metrics`. Labels are bounded: route and
//! credential names from the config, tenant aliases, status codes.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes the family lines for one label set.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-route counters: requests by status, upstream latency.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Index = status - 100.
    statuses: Box<[AtomicU64]>,
    /// Time to the upstream's answer head.
    pub upstream_latency: Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            statuses: (100..600).map(|_| AtomicU64::new(0)).collect(),
            upstream_latency: Histogram::default(),
        }
    }
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn count_status(&self, status: u16) {
        if let Some(c) = status
            .checked_sub(100)
            .and_then(|i| self.statuses.get(usize::from(i)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The process-wide registry. Families survive config reloads, keyed by name.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<HashMap<Arc<str>, Arc<RouteMetrics>>>,
    /// Requests being served.
    pub inflight: AtomicI64,
    /// Requests refused before routing (bad host, path, ...), by code.
    pub rejected: Mutex<HashMap<&'static str, u64>>,
    /// Client connections accepted, per worker.
    pub connections: Box<[AtomicU64]>,
}

impl Metrics {
    /// A registry for `workers` proxy workers.
    pub fn with_workers(workers: usize) -> Metrics {
        Metrics {
            connections: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            ..Metrics::default()
        }
    }

    /// Counts a client connection accepted by `worker`.
    pub fn count_connection(&self, worker: usize) {
        if let Some(c) = self.connections.get(worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters of route `name` (created on first use; called when a config is built).
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(name.clone()).or_default().clone()
    }

    /// Counts a request refused before it had a route.
    pub fn count_rejected(&self, code: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Renders the route families.
    pub fn render_routes(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = routes.keys().cloned().collect();
        names.sort();
        header(
            out,
            "defender_proxy_requests_total",
            "counter",
            "Requests answered, by route and HTTP status.",
        );
        for name in &names {
            for (i, c) in routes[name].statuses.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "defender_proxy_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        esc(name),
                        i + 100
                    );
                }
            }
        }
        header(
            out,
            "defender_proxy_upstream_latency_seconds",
            "histogram",
            "Time until the upstream's response head.",
        );
        for name in &names {
            routes[name].upstream_latency.render(
                out,
                "defender_proxy_upstream_latency_seconds",
                &format!("route=\"{}\"", esc(name)),
            );
        }
        header(
            out,
            "defender_proxy_rejected_requests_total",
            "counter",
            "Requests refused before routing, by error code.",
        );
        let rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        let mut codes: Vec<_> = rejected.iter().collect();
        codes.sort();
        for (code, n) in codes {
            let _ = writeln!(
                out,
                "defender_proxy_rejected_requests_total{{code=\"{code}\"}} {n}"
            );
        }
        header(
            out,
            "defender_proxy_worker_connections_total",
            "counter",
            "Client connections accepted, per worker thread.",
        );
        for (i, c) in self.connections.iter().enumerate() {
            let _ = writeln!(
                out,
                "defender_proxy_worker_connections_total{{worker=\"{i}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "defender_proxy_inflight_requests",
            "gauge",
            "Requests being served.",
        );
        let _ = writeln!(
            out,
            "defender_proxy_inflight_requests {}",
            self.inflight.load(Ordering::Relaxed)
        );
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value.
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Installs the global tracing subscriber (stderr). `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        let r = m.route(&Arc::from("defender"));
        r.count_status(200);
        r.count_status(200);
        r.count_status(429);
        r.count_status(42);
        r.upstream_latency.observe(Duration::from_millis(30));
        let mut out = String::new();
        m.render_routes(&mut out);
        assert!(
            out.contains("defender_proxy_requests_total{route=\"defender\",status=\"200\"} 2"),
            "{out}"
        );
        assert!(out.contains("defender_proxy_requests_total{route=\"defender\",status=\"429\"} 1"));
        assert!(out.contains(
            "defender_proxy_upstream_latency_seconds_bucket{route=\"defender\",le=\"0.05\"} 1"
        ));
        assert!(out.contains(
            "defender_proxy_upstream_latency_seconds_bucket{route=\"defender\",le=\"0.025\"} 0"
        ));
        assert!(out.contains("# TYPE defender_proxy_upstream_latency_seconds histogram"));
    }

    #[test]
    fn the_same_route_name_keeps_its_counters() {
        let m = Metrics::default();
        m.route(&Arc::from("a")).count_status(200);
        let again = m.route(&Arc::from("a"));
        assert_eq!(again.statuses[100].load(Ordering::Relaxed), 1);
    }
}
