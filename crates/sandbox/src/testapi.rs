//! Test helpers under `/api/_test/`: echo, streaming download and upload, slow and
//! arbitrary-status answers, and a redirect. They sit behind the same gate as the real API.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::api::{defender_error, status_code_name, with_retry_after};
use super::state::State;

/// Size of the chunks `download` sends.
const CHUNK: usize = 64 * 1024;
/// Longest wait `slow` agrees to.
const MAX_SLOW_MILLIS: u64 = 600_000;

pub(super) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/api/_test/echo", any(echo))
        .route("/api/_test/echo/{*rest}", any(echo))
        .route("/api/_test/download", get(download))
        .route("/api/_test/upload", post(upload).put(upload))
        .route("/api/_test/slow", get(slow))
        .route("/api/_test/status/{code}", any(status))
        .route("/api/_test/redirect", get(redirect))
        .route("/api/_test/json", get(json_body))
}

/// Method, path, query, headers and body length of the request, as JSON.
async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body_len) = count_body(body).await else {
        return bad_request("The request body could not be read.");
    };
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(name.as_str()).or_default().push(value);
    }
    let body = json!({
        "method": parts.method.as_str(), "path": parts.uri.path(), "query": parts.uri.query(),
        "headers": headers, "body_len": body_len,
    });
    Json(body).into_response()
}

/// Reads a body to its end, counting bytes without keeping them.
async fn count_body(body: Body) -> Result<u64, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        total += chunk?.len() as u64;
    }
    Ok(total)
}

#[derive(Deserialize)]
struct DownloadParams {
    bytes: u64,
}

/// `?bytes=N`: N bytes (byte `i` is `i % 256`) streamed in 64 KiB chunks, with Content-Length.
async fn download(params: Result<Query<DownloadParams>, QueryRejection>) -> Response {
    let Ok(Query(DownloadParams { bytes: total })) = params else {
        return bad_request("Query parameter 'bytes' must be a non-negative integer.");
    };
    let pattern: Bytes = (0..CHUNK).map(|i| i as u8).collect::<Vec<u8>>().into();
    let chunks = stream::unfold(total, move |remaining| {
        let pattern = pattern.clone();
        async move {
            let n = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
            (n > 0).then(|| {
                (
                    Ok::<_, Infallible>(pattern.slice(..n)),
                    remaining - n as u64,
                )
            })
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(total));
    response
}

/// Streams the request body to nowhere and answers `{"bytes": N}`.
async fn upload(body: Body) -> Response {
    match count_body(body).await {
        Ok(bytes) => Json(json!({"bytes": bytes})).into_response(),
        Err(_) => bad_request("The request body could not be read."),
    }
}

#[derive(Deserialize)]
struct SlowParams {
    millis: u64,
}

/// `?millis=N`: answers after N milliseconds.
async fn slow(params: Result<Query<SlowParams>, QueryRejection>) -> Response {
    let Ok(Query(SlowParams { millis })) = params else {
        return bad_request("Query parameter 'millis' must be a non-negative integer.");
    };
    let millis = millis.min(MAX_SLOW_MILLIS);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Json(json!({"slept_millis": millis})).into_response()
}

/// `/status/{code}[?retry_after=V]`: answers that status, with a Defender error body for errors.
async fn status(
    Path(code): Path<String>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let params = params.map(|Query(params)| params).unwrap_or_default();
    let Some(status) = code
        .parse()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.as_u16() >= 200)
    else {
        return bad_request("The status must be a number from 200 to 999.");
    };
    let response = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        status.into_response()
    } else if status.is_success() {
        (status, Json(json!({"status": status.as_u16()}))).into_response()
    } else {
        let message = format!("The sandbox answered {} as asked.", status.as_u16());
        defender_error(status, status_code_name(status), &message)
    };
    match params.get("retry_after") {
        Some(value) => with_retry_after(response, value),
        None => response,
    }
}

/// A redirect to another host (which a proxy must pass on rather than follow), or with
/// `?to=self` to this sandbox (which a proxy may rewrite to itself).
async fn redirect(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: http::HeaderMap,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let to_self = params.is_ok_and(|Query(p)| p.get("to").is_some_and(|t| t == "self"));
    let location = if to_self {
        format!("{}/api/incidents?$top=1", state.origin(&headers))
    } else {
        "https://example.invalid/elsewhere".to_string()
    };
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// `?bytes=N`: a JSON body of exactly N bytes (at least 200), streamed in 64 KiB chunks: an
/// `@odata.nextLink` to this sandbox first, then filler, then an `@odata.deltaLink` last. For
/// testing link rewriting on large bodies.
async fn json_body(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: http::HeaderMap,
    params: Result<Query<DownloadParams>, QueryRejection>,
) -> Response {
    let origin = state.origin(&headers);
    let head = format!(r#"{{"@odata.nextLink":"{origin}/api/_test/json?page=2","filler":""#);
    let tail = format!(r#"","@odata.deltaLink":"{origin}/api/_test/json?delta=1"}}"#);
    let fixed = (head.len() + tail.len()) as u64;
    let total = match params {
        Ok(Query(DownloadParams { bytes })) if bytes >= fixed => bytes,
        _ => return bad_request("Query parameter 'bytes' must be an integer of at least 200."),
    };
    let filler: Bytes = vec![b'x'; CHUNK].into();
    let parts = [Bytes::from(head), Bytes::new(), Bytes::from(tail)];
    let mut remaining = total - fixed;
    let chunks = stream::iter(parts).enumerate().flat_map(move |(i, part)| {
        let pieces: Vec<Bytes> = if i == 1 {
            let mut v = Vec::new();
            while remaining > 0 {
                let n = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
                v.push(filler.slice(..n));
                remaining -= n as u64;
            }
            v
        } else {
            vec![part]
        };
        stream::iter(pieces.into_iter().map(Ok::<_, Infallible>))
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(total));
    response
}

fn bad_request(message: &str) -> Response {
    defender_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::testkit::{XDR, get, get_json, http, start, token};
    use super::super::{SandboxOptions, TENANT_A};

    #[tokio::test]
    async fn echo_reports_the_request_as_received() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let resp = http()
            .patch(format!("{}/api/_test/echo/a/b?x=1&y=2", sb.url()))
            .bearer_auth(&a)
            .header("x-multi", "1")
            .header("x-multi-2", "2")
            .body("hello")
            .send()
            .await
            .expect("send");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["method"], "PATCH");
        assert_eq!(body["path"], "/api/_test/echo/a/b");
        assert_eq!(body["query"], "x=1&y=2");
        assert_eq!(body["body_len"], 5);
        assert_eq!(body["headers"]["x-multi"][0], "1");
        assert_eq!(sb.api_requests(), 1);
    }

    #[tokio::test]
    async fn download_streams_exactly_n_patterned_bytes() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let n = 3 * 64 * 1024 + 17;
        let resp = get(&sb, &a, &format!("/api/_test/download?bytes={n}")).await;
        assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
        let bytes = resp.bytes().await.expect("body");
        assert_eq!(bytes.len(), n);
        assert!(bytes.iter().enumerate().all(|(i, b)| *b == i as u8));
        let empty = get(&sb, &a, "/api/_test/download?bytes=0").await;
        assert_eq!(empty.bytes().await.map(|b| b.len()).ok(), Some(0));
        get_json(&sb, &a, "/api/_test/download", 400).await;
    }

    #[tokio::test]
    async fn upload_counts_the_streamed_body() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let chunk = bytes::Bytes::from(vec![7u8; 100_000]);
        let frames: Vec<Result<_, std::io::Error>> = (0..8)
            .map(|_| Ok(http_body::Frame::data(chunk.clone())))
            .collect();
        let body = reqwest::Body::wrap(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        ));
        let resp = http()
            .put(format!("{}/api/_test/upload", sb.url()))
            .bearer_auth(&a)
            .body(body)
            .send()
            .await;
        let body: Value = resp.expect("send").json().await.expect("json");
        assert_eq!(body["bytes"], 800_000);
    }

    #[tokio::test]
    async fn status_slow_and_redirect_answer_as_asked() {
        let sb = start(SandboxOptions::default()).await;
        let a = token(&sb, TENANT_A, XDR).await;
        let resp = get(&sb, &a, "/api/_test/status/429?retry_after=3").await;
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "TooManyRequests");
        get_json(&sb, &a, "/api/_test/status/abc", 400).await;
        assert_eq!(
            get(&sb, &a, "/api/_test/status/204")
                .await
                .status()
                .as_u16(),
            204
        );
        let started = std::time::Instant::now();
        get_json(&sb, &a, "/api/_test/slow?millis=150", 200).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        let resp = get(&sb, &a, "/api/_test/redirect").await;
        assert_eq!(resp.status().as_u16(), 302);
        assert_eq!(
            resp.headers()["location"],
            "https://example.invalid/elsewhere"
        );
    }
}
