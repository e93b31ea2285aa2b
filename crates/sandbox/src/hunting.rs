//! Advanced hunting: `POST /api/advancedhunting/run` (and MDE's `/api/advancedqueries/run`).
//!
//! The query is not executed; the answer has the real shape (`Stats`, `Schema`, `Results`)
//! with as many rows as a trailing `take N` / `limit N` asks for (default 10).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use http::StatusCode;
use serde_json::{Value, json};

use super::api::defender_error;
use super::data::{BASE_TIME, Rng, machine_id, machine_name};
use super::state::State;
use super::time::iso8601;
use super::tokens::Caller;

const DEFAULT_ROWS: usize = 10;
const MAX_ROWS: usize = 10_000;
const ACTIONS: [&str; 4] = [
    "ProcessCreated",
    "FileCreated",
    "ConnectionSuccess",
    "RegistryValueSet",
];
const FILES: [&str; 4] = ["powershell.exe", "cmd.exe", "rundll32.exe", "svchost.exe"];

pub(super) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/api/advancedhunting/run", post(run))
        .route("/api/advancedqueries/run", post(run))
}

async fn run(
    AxState(st): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let query = body.ok().and_then(|Json(body)| {
        let query = body.get("Query")?.as_str()?.trim();
        (!query.is_empty()).then(|| query.to_owned())
    });
    let Some(query) = query else {
        let message = "The request body must be JSON with a non-empty 'Query', e.g. {\"Query\":\"DeviceEvents | take 10\"}.";
        return defender_error(StatusCode::BAD_REQUEST, "BadRequest", message);
    };
    let rows = requested_rows(&query);
    let results: Vec<Value> = (0..rows)
        .map(|i| row(st.opts.seed, &caller.tenant, &query, i))
        .collect();
    Json(json!({"Stats": stats(rows), "Schema": schema(), "Results": results})).into_response()
}

/// The `N` of the last `take N` or `limit N`, capped; the default otherwise.
fn requested_rows(query: &str) -> usize {
    let words: Vec<&str> = query
        .split(|c: char| c.is_whitespace() || c == '|')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .rev()
        .find(|pair| pair[0].eq_ignore_ascii_case("take") || pair[0].eq_ignore_ascii_case("limit"))
        .and_then(|pair| pair[1].trim_end_matches(';').parse().ok())
        .map_or(DEFAULT_ROWS, |n: usize| n.min(MAX_ROWS))
}

fn schema() -> Value {
    let columns = [
        ("Timestamp", "DateTime"),
        ("DeviceId", "String"),
        ("DeviceName", "String"),
        ("ActionType", "String"),
        ("FileName", "String"),
        ("ReportId", "Int64"),
        ("TenantId", "String"),
    ];
    columns
        .iter()
        .map(|(name, ty)| json!({"Name": name, "Type": ty}))
        .collect()
}

fn row(seed: u64, tenant: &str, query: &str, index: usize) -> Value {
    let mut rng = Rng::for_item(seed, tenant, query, index);
    let device = rng.index(50);
    json!({
        "Timestamp": iso8601(BASE_TIME.saturating_sub(rng.below(86_400 * 7))),
        "DeviceId": machine_id(seed, tenant, device),
        "DeviceName": machine_name(tenant, device),
        "ActionType": rng.pick(&ACTIONS),
        "FileName": rng.pick(&FILES),
        "ReportId": rng.below(1_000_000),
        "TenantId": tenant,
    })
}

fn stats(rows: usize) -> Value {
    json!({
        "ExecutionTime": 0.0427,
        "resource_usage": {
            "cache": {"memory": {"hits": 12, "misses": 0, "total": 12}, "disk": {"hits": 0, "misses": 0, "total": 0}},
            "cpu": {"user": "00:00:00.0156250", "kernel": "00:00:00", "total cpu": "00:00:00.0156250"},
            "memory": {"peak_per_node": 16_777_312},
        },
        "dataset_statistics": [{"table_row_count": rows, "table_size": rows * 220}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_follows_take_or_limit() {
        assert_eq!(requested_rows("DeviceEvents | take 3"), 3);
        assert_eq!(requested_rows("DeviceEvents|limit 7;"), 7);
        assert_eq!(requested_rows("DeviceEvents | where x == 1"), DEFAULT_ROWS);
        assert_eq!(requested_rows("DeviceEvents | take 99999999"), MAX_ROWS);
    }
}

#[cfg(test)]
mod server_tests {
    use serde_json::{Value, json};

    use super::super::testkit::{XDR, http, start, token};
    use super::super::{SandboxOptions, TENANT_A};

    #[tokio::test]
    async fn run_answers_schema_and_rows_or_400() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        for path in ["/api/advancedhunting/run", "/api/advancedqueries/run"] {
            let url = format!("{}{path}", sb.url());
            let query = json!({"Query": "DeviceProcessEvents | take 4"});
            let resp = http()
                .post(&url)
                .bearer_auth(&a)
                .json(&query)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status().as_u16(), 200);
            let body: Value = resp.json().await.expect("json");
            assert_eq!(
                body["Schema"][0],
                json!({"Name": "Timestamp", "Type": "DateTime"})
            );
            assert_eq!(body["Results"].as_array().map(Vec::len), Some(4));
            assert_eq!(body["Results"][0]["TenantId"], TENANT_A);
            assert!(body["Stats"]["ExecutionTime"].is_number());
            let resp = http()
                .post(&url)
                .bearer_auth(&a)
                .json(&json!({"Query": " "}))
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status().as_u16(), 400);
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body["error"]["code"], "BadRequest");
        }
    }
}
