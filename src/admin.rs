//! The admin listener: `/healthz`, `/readyz` and `/metrics`, on its own address so it never
//! shadows an upstream path.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::telemetry::{esc, header as family};
use crate::token::Health;

/// Serves the admin endpoints until `stop`.
pub async fn serve(state: Arc<AppState>, listener: TcpListener, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin listener failed");
    }
}

/// 200 when every credential's last token attempt succeeded or none was tried; else 503 with
/// the reason per credential.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let rt = state.runtime.load();
    let mut ready = true;
    let mut creds = serde_json::Map::new();
    for c in &rt.credentials {
        let text = match &**c.health.load() {
            Health::Untried => "untried".to_string(),
            Health::Ok => "ok".to_string(),
            Health::Failed(reason) => {
                ready = false;
                reason.clone()
            }
        };
        creds.insert(c.name.to_string(), serde_json::Value::String(text));
    }
    let body = serde_json::json!({ "status": if ready { "ready" } else { "unready" }, "credentials": creds });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(8192);
    state.metrics.render_routes(&mut out);
    render_tokens(&state, &mut out);
    state.limiter.render(&mut out);
    family(
        &mut out,
        "defender_proxy_config_reloads_total",
        "counter",
        "Config reloads by outcome.",
    );
    for (outcome, n) in [("ok", &state.reloads.ok), ("error", &state.reloads.failed)] {
        let _ = writeln!(
            out,
            "defender_proxy_config_reloads_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn render_tokens(state: &AppState, out: &mut String) {
    let rt = state.runtime.load();
    family(
        out,
        "defender_proxy_token_fetches_total",
        "counter",
        "Token fetches by credential and outcome.",
    );
    for c in &rt.credentials {
        let name = esc(&c.name);
        for (outcome, n) in [
            ("ok", &c.stats.ok),
            ("rejected", &c.stats.rejected),
            ("unavailable", &c.stats.unavailable),
        ] {
            let _ = writeln!(
                out,
                "defender_proxy_token_fetches_total{{credential=\"{name}\",outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
    let stats = &state.tokens.stats;
    family(
        out,
        "defender_proxy_token_cache_requests_total",
        "counter",
        "Token cache lookups by result.",
    );
    for (result, n) in [
        ("hit", stats.hits.sum()),
        ("miss", stats.misses.load(Ordering::Relaxed)),
    ] {
        let _ = writeln!(
            out,
            "defender_proxy_token_cache_requests_total{{result=\"{result}\"}} {n}"
        );
    }
    family(
        out,
        "defender_proxy_token_refreshes_total",
        "counter",
        "Background token refreshes started.",
    );
    let _ = writeln!(
        out,
        "defender_proxy_token_refreshes_total {}",
        stats.refreshes.load(Ordering::Relaxed)
    );
    family(
        out,
        "defender_proxy_token_expiry_seconds",
        "gauge",
        "Seconds until each cached token expires.",
    );
    for (id, tenant, secs) in state.tokens.expiries() {
        if let Some(c) = rt.credentials.iter().find(|c| c.id == id) {
            let tenant = rt.router.tenant_label(&tenant);
            let _ = writeln!(
                out,
                "defender_proxy_token_expiry_seconds{{credential=\"{}\",tenant=\"{}\"}} {secs:.0}",
                esc(&c.name),
                esc(&tenant)
            );
        }
    }
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
