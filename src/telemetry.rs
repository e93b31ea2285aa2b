//! Logging setup and the metrics: prometheus-client families for the request path, and the
//! registry rendered on `/metrics` in the Prometheus text format. Labels are bounded: route and
//! credential names from the config, tenant aliases, status codes and error codes.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0,
];

/// A histogram with the latency buckets.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// `route` and `status`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route's name.
    pub route: Arc<str>,
    /// The answer's status code.
    pub status: u16,
}

/// `route`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's name.
    pub route: Arc<str>,
}

/// `code`: the proxy's own error code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code, or `Other`.
    pub code: String,
}

/// The request path's metric families. They outlive config reloads, so a route keeps its
/// counts across them.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Requests answered, by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// Time to the upstream's answer head, by route.
    pub upstream_latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Requests refused before they had a route, by error code.
    pub rejected: Family<CodeLabel, Counter>,
    /// Requests being served.
    pub inflight: Gauge,
    /// Client connections accepted.
    pub connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
            inflight: Gauge::default(),
            connections: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts one answered request on `route`, with its upstream latency if it reached one.
    pub fn count_request(&self, route: &Arc<str>, status: u16, latency: Option<Duration>) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.clone(),
                status,
            })
            .inc();
        if let Some(latency) = latency {
            self.upstream_latency
                .get_or_create(&RouteLabel {
                    route: route.clone(),
                })
                .observe(latency.as_secs_f64());
        }
    }

    /// Counts a request refused before it had a route.
    pub fn count_rejected(&self, code: &str) {
        self.rejected
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    /// Registers the families in `registry` (names without the `_total` that the encoder adds
    /// to counters).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "defender_proxy_requests",
            "Requests answered, by route and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "defender_proxy_upstream_latency_seconds",
            "Time until the upstream's response head",
            self.upstream_latency.clone(),
        );
        registry.register(
            "defender_proxy_rejected_requests",
            "Requests refused before routing, by error code",
            self.rejected.clone(),
        );
        registry.register(
            "defender_proxy_inflight_requests",
            "Requests being served",
            self.inflight.clone(),
        );
        registry.register(
            "defender_proxy_connections",
            "Client connections accepted",
            self.connections.clone(),
        );
    }
}

/// Renders `registry` in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
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

    fn rendered(m: &Metrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        render(&registry)
    }

    #[test]
    fn route_metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        let route: Arc<str> = Arc::from("defender");
        m.count_request(&route, 200, Some(Duration::from_millis(30)));
        m.count_request(&route, 200, None);
        m.count_request(&route, 429, None);
        m.count_rejected("BadHost");
        m.inflight.inc();
        let out = rendered(&m);
        for line in [
            "defender_proxy_requests_total{route=\"defender\",status=\"200\"} 2",
            "defender_proxy_requests_total{route=\"defender\",status=\"429\"} 1",
            "defender_proxy_upstream_latency_seconds_bucket{route=\"defender\",le=\"0.05\"} 1",
            "defender_proxy_upstream_latency_seconds_bucket{route=\"defender\",le=\"0.025\"} 0",
            "defender_proxy_upstream_latency_seconds_count{route=\"defender\"} 1",
            "defender_proxy_rejected_requests_total{code=\"BadHost\"} 1",
            "defender_proxy_inflight_requests 1",
            "# TYPE defender_proxy_upstream_latency_seconds histogram",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }

    #[test]
    fn a_route_keeps_its_counts_across_reloads() {
        let m = Metrics::default();
        m.count_request(&Arc::from("a"), 200, None);
        m.count_request(&Arc::from("a"), 200, None);
        assert!(
            rendered(&m).contains("defender_proxy_requests_total{route=\"a\",status=\"200\"} 2")
        );
    }
}
