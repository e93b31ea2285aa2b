//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/ratelimits`, on its own address
//! so it never shadows an upstream path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::telemetry;
use crate::token::Health;

/// Serves the admin endpoints until `stop`.
pub async fn serve(state: Arc<AppState>, listener: TcpListener, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ratelimits", get(ratelimits))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin listener failed");
    }
}

/// 200 when every credential has the tokens its routes need without a tenant header (see
/// `crate::warmup`), else 503 with the reason per credential. Without warm-up: when every
/// credential's last token attempt succeeded or none was tried.
/// Also names the rate-limit store's state: `local`, `ok` or `degraded` (which never makes it
/// 503: the replica limits itself to its share meanwhile).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let rt = state.runtime.load();
    let mut ready = true;
    let mut creds = serde_json::Map::new();
    for c in &rt.credentials {
        let text = match (c.readiness(), &**c.health.load()) {
            (Some(Ok(())), _) => "ok".to_string(),
            (Some(Err(reason)), _) => {
                ready = false;
                reason
            }
            (None, Health::Failed(reason)) => {
                ready = false;
                reason.clone()
            }
            (None, Health::Untried) => "untried".to_string(),
            (None, Health::Ok) => "ok".to_string(),
        };
        creds.insert(c.name.to_string(), serde_json::Value::String(text));
    }
    // A degraded store does not make the replica unready: it limits locally meanwhile.
    let store = state.shared.limiter.store_health();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unready" },
        "credentials": creds,
        "rate_limit_store": store,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Every (limit, tenant) budget: used and remaining per window, the next free slot, the
/// upstream's pause and the queue, with the tenant's alias (or `home`, or `*`).
async fn ratelimits(State(state): State<Arc<AppState>>) -> Response {
    let rt = state.runtime.load();
    let budgets: Vec<serde_json::Value> = state
        .shared
        .limiter
        .budgets()
        .into_iter()
        .map(|b| {
            let tenant = rt.router.tenant_label(&b.tenant_id);
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v["tenant"] = serde_json::Value::String(tenant.to_string());
            v
        })
        .collect();
    axum::Json(serde_json::json!({ "limits": budgets })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut registry = Registry::default();
    state.shared.metrics.register(&mut registry);
    register_tokens(&state, &mut registry);
    state.shared.limiter.register(&mut registry);
    let reloads = Family::<[(&'static str, &'static str); 1], Counter>::default();
    for (outcome, n) in [("ok", &state.reloads.ok), ("error", &state.reloads.failed)] {
        reloads
            .get_or_create(&[("outcome", outcome)])
            .inc_by(n.load(Ordering::Relaxed));
    }
    registry.register(
        "defender_proxy_config_reloads",
        "Config reloads by outcome",
        reloads,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render(&registry),
    )
        .into_response()
}

/// The token families, as the cache and the credentials count them now.
fn register_tokens(state: &AppState, registry: &mut Registry) {
    let rt = state.runtime.load();
    let fetches = Family::<[(&'static str, String); 2], Counter>::default();
    for c in &rt.credentials {
        for (outcome, n) in [
            ("ok", &c.stats.ok),
            ("rejected", &c.stats.rejected),
            ("unavailable", &c.stats.unavailable),
        ] {
            fetches
                .get_or_create(&[
                    ("credential", c.name.to_string()),
                    ("outcome", outcome.into()),
                ])
                .inc_by(n.load(Ordering::Relaxed));
        }
    }
    registry.register(
        "defender_proxy_token_fetches",
        "Token fetches by credential and outcome",
        fetches,
    );
    let stats = &state.shared.tokens.stats;
    let lookups = Family::<[(&'static str, &'static str); 1], Counter>::default();
    for (result, n) in [("hit", &stats.hits), ("miss", &stats.misses)] {
        lookups
            .get_or_create(&[("result", result)])
            .inc_by(n.load(Ordering::Relaxed));
    }
    registry.register(
        "defender_proxy_token_cache_requests",
        "Token cache lookups by result",
        lookups,
    );
    let refreshes = Counter::<u64>::default();
    refreshes.inc_by(stats.refreshes.load(Ordering::Relaxed));
    registry.register(
        "defender_proxy_token_refreshes",
        "Background token refreshes started",
        refreshes,
    );
    let expiry = Family::<[(&'static str, String); 2], Gauge<f64, AtomicU64>>::default();
    for (id, tenant, secs) in state.shared.tokens.expiries() {
        if let Some(c) = rt.credentials.iter().find(|c| c.id == id) {
            let tenant = rt.router.tenant_label(&tenant);
            expiry
                .get_or_create(&[
                    ("credential", c.name.to_string()),
                    ("tenant", tenant.to_string()),
                ])
                .set(secs.round());
        }
    }
    registry.register(
        "defender_proxy_token_expiry_seconds",
        "Seconds until each cached token expires",
        expiry,
    );
}

/// GETs a plain-http health URL; true on a 200 within 3 s. Used by the container health check,
/// where no curl is available.
pub async fn probe(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let (Some(host), Some("http")) = (uri.host(), uri.scheme_str()) else {
        return false;
    };
    let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
