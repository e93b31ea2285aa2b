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

/// Adds `n` to a count that one thread alone writes (a worker's own part): a load and a
/// store, where `fetch_add` is a locked read-modify-write (about 6 ns here, and a request
/// counted several). Readers on other threads still see whole values.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.record(d, |c, n| {
            c.fetch_add(n, Ordering::Relaxed);
        });
    }

    /// Records one observation in a histogram that one thread alone writes (see `bump`).
    fn observe_own(&self, d: Duration) {
        self.record(d, bump);
    }

    fn record(&self, d: Duration, add: impl Fn(&AtomicU64, u64)) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            add(&self.buckets[i], 1);
        }
        add(&self.count, 1);
        add(&self.sum_micros, d.as_micros() as u64);
    }

    /// Writes the family lines for one label set, summing `parts`.
    pub fn render(parts: &[&Histogram], out: &mut String, name: &str, labels: &str) {
        let total = |f: fn(&Histogram) -> &AtomicU64| -> u64 {
            parts.iter().map(|h| f(h).load(Ordering::Relaxed)).sum()
        };
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += parts
                .iter()
                .map(|h| h.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = total(|h| &h.count);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = total(|h| &h.sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// One value per proxy worker, each on cache lines of its own: a worker counting a request
/// never writes to a line another core is using, which on the request path cost more than
/// the counting itself. Readers sum the parts. Only worker `i`'s thread writes part `i`, so
/// the counts are added with a load and a store, not a locked `fetch_add`.
#[derive(Debug)]
pub struct PerWorker<T>(Box<[CacheLines<T>]>);

#[derive(Debug, Default)]
#[repr(align(128))]
struct CacheLines<T>(T);

impl<T: Default> PerWorker<T> {
    /// Parts for `workers` workers (at least one).
    pub fn new(workers: usize) -> Self {
        PerWorker(
            (0..workers.max(1))
                .map(|_| CacheLines(T::default()))
                .collect(),
        )
    }
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker::new(1)
    }
}

impl<T> PerWorker<T> {
    /// Worker `worker`'s part (a number past the last worker wraps around).
    pub fn get(&self, worker: usize) -> &T {
        &self.0[worker % self.0.len()].0
    }

    /// All parts.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|p| &p.0)
    }
}

impl PerWorker<AtomicU64> {
    /// Adds one to worker `worker`'s count (on worker `worker`'s thread only).
    pub fn incr(&self, worker: usize) {
        bump(self.get(worker), 1);
    }

    /// The sum over the workers.
    pub fn sum(&self) -> u64 {
        self.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Per-route counters: requests by status, upstream latency, each per worker.
#[derive(Debug)]
pub struct RouteMetrics {
    parts: PerWorker<RoutePart>,
}

#[derive(Debug)]
struct RoutePart {
    /// Index = status - 100.
    statuses: Box<[AtomicU64]>,
    /// Time to the upstream's answer head.
    upstream_latency: Histogram,
}

impl Default for RoutePart {
    fn default() -> Self {
        RoutePart {
            statuses: (100..600).map(|_| AtomicU64::new(0)).collect(),
            upstream_latency: Histogram::default(),
        }
    }
}

impl RouteMetrics {
    /// Counters for `workers` workers.
    pub fn new(workers: usize) -> Self {
        RouteMetrics {
            parts: PerWorker::new(workers),
        }
    }

    /// Counts one request answered by `worker`.
    pub fn count_status(&self, worker: usize, status: u16) {
        if let Some(c) = status
            .checked_sub(100)
            .and_then(|i| self.parts.get(worker).statuses.get(usize::from(i)))
        {
            bump(c, 1);
        }
    }

    /// Records the upstream latency of one request served by `worker` (on its thread).
    pub fn observe_latency(&self, worker: usize, d: Duration) {
        self.parts.get(worker).upstream_latency.observe_own(d);
    }

    /// Requests answered with `status` (all workers).
    pub fn status_count(&self, status: u16) -> u64 {
        let i = usize::from(status.saturating_sub(100));
        self.parts
            .iter()
            .filter_map(|p| p.statuses.get(i))
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The process-wide registry. Families survive config reloads, keyed by name.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Proxy workers (0 counts as 1).
    workers: usize,
    routes: Mutex<HashMap<Arc<str>, Arc<RouteMetrics>>>,
    /// Requests being served, counted by the worker that serves them.
    inflight: PerWorker<AtomicI64>,
    /// Requests refused before routing (bad host, path, ...), by code.
    pub rejected: Mutex<HashMap<&'static str, u64>>,
    /// Client connections accepted, per worker.
    pub connections: Box<[AtomicU64]>,
}

impl Metrics {
    /// A registry for `workers` proxy workers.
    pub fn with_workers(workers: usize) -> Metrics {
        Metrics {
            workers,
            connections: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            inflight: PerWorker::new(workers),
            ..Metrics::default()
        }
    }

    /// A request starts (`1`) or ends (`-1`) on `worker` (on its thread: see `bump`).
    pub fn add_inflight(&self, worker: usize, n: i64) {
        let c = self.inflight.get(worker);
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
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
        routes
            .entry(name.clone())
            .or_insert_with(|| Arc::new(RouteMetrics::new(self.workers)))
            .clone()
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
            for status in 100..600 {
                let n = routes[name].status_count(status);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "defender_proxy_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        esc(name),
                        status
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
            Histogram::render(
                &routes[name]
                    .parts
                    .iter()
                    .map(|p| &p.upstream_latency)
                    .collect::<Vec<_>>(),
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
            self.inflight
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum::<i64>()
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

/// A worker thread's log lines once they fill this many bytes are written out at once.
pub const LOG_BUFFER_BYTES: usize = 16 * 1024;

/// A worker thread's log lines not yet written out, and where they go.
struct Lines(Vec<u8>, fn(&[u8]));

impl Lines {
    fn write_out(&mut self) {
        if !self.0.is_empty() {
            (self.1)(&self.0);
            self.0.clear();
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.write_out();
    }
}

fn to_stderr(lines: &[u8]) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), lines);
}

thread_local! {
    static LINES: std::cell::RefCell<Option<Lines>> = const { std::cell::RefCell::new(None) };
}

/// From now on, this thread's log lines are kept and written out together: by `flush_logs`
/// (a worker calls it before its event loop goes idle), when `LOG_BUFFER_BYTES` gather, and
/// when the thread ends. Under load, one write and one take of the stderr lock then serve
/// many access-log lines, where each line took both.
pub fn buffer_logs() {
    buffer_logs_to(to_stderr);
}

fn buffer_logs_to(sink: fn(&[u8])) {
    LINES.with(|l| *l.borrow_mut() = Some(Lines(Vec::with_capacity(LOG_BUFFER_BYTES), sink)));
}

/// Writes out the log lines this thread kept (none if it does not keep them).
pub fn flush_logs() {
    LINES.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut()
            && let Some(lines) = l.as_mut()
        {
            lines.write_out();
        }
    });
}

/// Where log lines go: the thread's kept lines (see `buffer_logs`), else stderr at once.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.write_all(b)?;
        Ok(b.len())
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        let kept = LINES
            .try_with(|l| {
                let mut l = l.try_borrow_mut().ok()?;
                let lines = l.as_mut()?;
                lines.0.extend_from_slice(b);
                if lines.0.len() >= LOG_BUFFER_BYTES {
                    lines.write_out();
                }
                Some(())
            })
            .ok()
            .flatten();
        match kept {
            Some(()) => Ok(()),
            None => std::io::stderr().write_all(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        .with_writer(|| LogWriter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Option<usize> {
        LINES.with(|l| l.borrow().as_ref().map(|l| l.0.len()))
    }

    thread_local! {
        static WRITTEN: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn count(lines: &[u8]) {
        WRITTEN.with(|w| w.borrow_mut().push(lines.len()));
    }

    fn written() -> Vec<usize> {
        WRITTEN.with(|w| w.borrow().clone())
    }

    #[test]
    fn a_worker_thread_keeps_its_log_lines_until_it_flushes_or_many_gather() {
        std::thread::spawn(|| {
            use std::io::Write;
            LogWriter.write_all(b"").unwrap();
            assert_eq!(kept(), None, "a thread that did not ask writes through");
            buffer_logs_to(count);
            LogWriter.write_all(b"one line\n").unwrap();
            LogWriter.write_all(b"two\n").unwrap();
            assert_eq!(kept(), Some(13));
            assert!(written().is_empty());
            flush_logs();
            assert_eq!(kept(), Some(0));
            assert_eq!(written(), [13], "written out in one go");
            flush_logs();
            assert_eq!(written(), [13], "nothing to write");
            let line = [b'x'; 1000];
            for _ in 0..LOG_BUFFER_BYTES / 1000 {
                LogWriter.write_all(&line).unwrap();
            }
            assert_eq!(kept(), Some(LOG_BUFFER_BYTES / 1000 * 1000));
            LogWriter.write_all(&line).unwrap();
            assert_eq!(kept(), Some(0));
            assert_eq!(
                written(),
                [13, 17_000],
                "written out once the buffer is full"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn route_metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        let r = m.route(&Arc::from("defender"));
        r.count_status(0, 200);
        r.count_status(0, 200);
        r.count_status(0, 429);
        r.count_status(0, 42);
        r.observe_latency(0, Duration::from_millis(30));
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
        m.route(&Arc::from("a")).count_status(0, 200);
        let again = m.route(&Arc::from("a"));
        assert_eq!(again.status_count(200), 1);
    }

    #[test]
    fn per_worker_counts_add_up() {
        let m = Metrics::with_workers(2);
        let r = m.route(&Arc::from("a"));
        r.count_status(0, 200);
        r.count_status(1, 200);
        r.count_status(1, 404);
        r.observe_latency(0, Duration::from_millis(3));
        r.observe_latency(1, Duration::from_millis(30));
        m.add_inflight(0, 1);
        m.add_inflight(1, 1);
        m.add_inflight(0, -1);
        let mut out = String::new();
        m.render_routes(&mut out);
        for line in [
            "defender_proxy_requests_total{route=\"a\",status=\"200\"} 2",
            "defender_proxy_requests_total{route=\"a\",status=\"404\"} 1",
            "defender_proxy_upstream_latency_seconds_bucket{route=\"a\",le=\"0.005\"} 1",
            "defender_proxy_upstream_latency_seconds_count{route=\"a\"} 2",
            "defender_proxy_inflight_requests 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
        let parts: Vec<_> = r
            .parts
            .iter()
            .map(|p| p as *const RoutePart as usize)
            .collect();
        assert!(
            parts[1].abs_diff(parts[0]) >= 128,
            "parts share a cache line"
        );
    }
}
