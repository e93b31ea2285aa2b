//! Hostile input on the hyper-based stack: a second or malformed Host, a `Connection` header
//! that names the security headers, TRACE, a stalled request body, an empty path, and an
//! HTTP/1.0 upstream answer that claims a transfer coding.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Setup, TestEnv, raw, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn refused(env: &TestEnv, request: &str, status: &str, code: &str) {
    let before = env.sandbox.api_requests();
    let answer = raw(env.proxy.proxy_addr, request.as_bytes()).await;
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{request:?} got {answer}"
    );
    assert!(
        answer.contains(&format!("x-defender-proxy-error: {code}")),
        "{answer}"
    );
    assert_eq!(
        env.sandbox.api_requests(),
        before,
        "{request:?} went upstream"
    );
}

#[tokio::test]
async fn the_host_must_be_one_plain_authority_that_agrees_with_the_target() {
    let env = start(Setup::default()).await;
    let two = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    refused(&env, two, "400", "BadHost").await;
    let same_twice = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    refused(&env, same_twice, "400", "BadHost").await;
    let userinfo =
        "GET /api/incidents HTTP/1.1\r\nHost: evil.example@127.0.0.1\r\nConnection: close\r\n\r\n";
    refused(&env, userinfo, "400", "BadHost").await;
    let junk = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1:80:80\r\nConnection: close\r\n\r\n";
    refused(&env, junk, "400", "BadHost").await;
    let disagree = "GET http://localhost/api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    refused(&env, disagree, "400", "BadHost").await;
}

#[tokio::test]
async fn a_connection_header_cannot_hide_the_headers_the_checks_read() {
    let env = start(Setup {
        server: "inbound_key = \"let-me-in\"".into(),
        ..Setup::default()
    })
    .await;
    let hidden_origin = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nx-defender-proxy-key: let-me-in\r\nOrigin: http://evil.example\r\nConnection: close, origin\r\n\r\n";
    refused(&env, hidden_origin, "403", "BadOrigin").await;
    let hidden_site = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nx-defender-proxy-key: let-me-in\r\nSec-Fetch-Site: cross-site\r\nConnection: close, sec-fetch-site\r\n\r\n";
    refused(&env, hidden_site, "403", "BadOrigin").await;
    let hidden_host = "GET /api/incidents HTTP/1.1\r\nHost: evil.example\r\nx-defender-proxy-key: let-me-in\r\nConnection: close, host\r\n\r\n";
    refused(&env, hidden_host, "400", "BadHost").await;
    let hidden_tenant = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nx-defender-proxy-key: let-me-in\r\nx-tenant-id: nowhere\r\nConnection: close, x-tenant-id\r\n\r\n";
    refused(&env, hidden_tenant, "403", "TenantNotAllowed").await;
    // The key named in Connection is still the key: read before any header is removed.
    let named_key = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nx-defender-proxy-key: let-me-in\r\nConnection: close, x-defender-proxy-key\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, named_key.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let no_key = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close, x-defender-proxy-key\r\n\r\n";
    refused(&env, no_key, "401", "Unauthenticated").await;
}

#[tokio::test]
async fn trace_is_refused_and_never_forwarded() {
    let env = start(Setup::default()).await;
    let trace = "TRACE /api/_test/echo/t HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    refused(&env, trace, "405", "MethodNotAllowed").await;
}

/// Sends a head that promises `declared` bytes and only `sent` of them, then waits for the
/// answer and for the connection to close; gives the answer and how long that took.
async fn stall(env: &TestEnv, declared: usize, sent: usize) -> (String, Duration) {
    let mut s = tokio::net::TcpStream::connect(env.proxy.proxy_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_off_with_408_and_the_connection_closed() {
    let env = start(Setup {
        server: "body_timeout_secs = 1".into(),
        ..Setup::default()
    })
    .await;
    // Within the part kept for replay, and past it (already streaming upstream).
    for (declared, sent) in [(1000, 10), (1024 * 1024, 100 * 1024)] {
        let (answer, took) = stall(&env, declared, sent).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{declared}: {answer}");
        assert!(
            answer.contains("x-defender-proxy-error: RequestTimeout"),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{declared}: closed after {took:?}"
        );
    }
}

/// An upstream that records each request line and answers with `answer`, keeping the
/// connection open; counts connections.
async fn recording_upstream(
    answer: &'static str,
) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, l) = (connections.clone(), lines.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let l = l.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tcp.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    l.lock()
                        .unwrap()
                        .push(text.lines().next().unwrap_or("").to_string());
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, connections, lines)
}

#[tokio::test]
async fn an_empty_path_goes_upstream_as_a_slash_with_the_query() {
    let (url, _, lines) = recording_upstream(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let env = start(Setup {
        upstream: Some(url),
        ..Setup::default()
    })
    .await;
    let port = env.proxy.proxy_addr.port();
    let request = format!(
        "GET http://127.0.0.1:{port}?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(env.proxy.proxy_addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(lines.lock().unwrap().as_slice(), ["GET /?q=1 HTTP/1.1"]);
}

#[tokio::test]
async fn an_http10_answer_with_a_transfer_coding_never_goes_back_to_the_pool() {
    let (url, connections, lines) = recording_upstream(
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let env = start(Setup {
        upstream: Some(url),
        ..Setup::default()
    })
    .await;
    for _ in 0..2 {
        let resp = env.get("/api/x").await;
        let _ = resp.bytes().await;
    }
    assert_eq!(lines.lock().unwrap().len(), 2);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the connection of an HTTP/1.0 answer with Transfer-Encoding was reused"
    );
}
