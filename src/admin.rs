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
    for (result, n) in [("hit", &stats.hits), ("miss", &stats.misses)] {
        let _ = writeln!(
            out,
            "defender_proxy_token_cache_requests_total{{result=\"{result}\"}} {}",
            n.load(Ordering::Relaxed)
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
