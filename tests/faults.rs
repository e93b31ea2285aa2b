//! Faults of the identity provider, the upstream and the client: the right status and code,
//! no panic, the in-flight gauge back to zero, and recovery once the fault clears.

mod common;

use std::time::Duration;

use common::{Setup, TestEnv, start};
use defender_sandbox::{ApiFault, TokenFault};

async fn inflight(env: &TestEnv) -> i64 {
    let text = env.metrics().await;
    text.lines()
        .find(|l| l.starts_with("defender_proxy_inflight_requests "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap()
}

async fn settles_to_zero(env: &TestEnv) {
    for _ in 0..100 {
        if inflight(env).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("requests still counted in flight");
}

#[tokio::test]
async fn a_token_endpoint_that_resets_the_connection_is_retried() {
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault_times(TokenFault::Reset, 2);
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    assert_eq!(env.sandbox.token_requests(), 3);
}

#[tokio::test]
async fn a_throttling_token_endpoint_is_waited_out_then_reported() {
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault_times(
        TokenFault::Status {
            status: 429,
            retry_after_secs: Some(1),
            error: None,
            aadsts: None,
        },
        1,
    );
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault(Some(TokenFault::Status {
        status: 429,
        retry_after_secs: Some(60),
        error: None,
        aadsts: None,
    }));
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenUnavailable"));
    assert_eq!(
        resp.headers()["retry-after"],
        "60",
        "the provider's own time is passed on"
    );
    assert_eq!(
        env.sandbox.token_requests(),
        1,
        "no retry against a 60 s Retry-After"
    );
}

#[tokio::test]
async fn a_slow_token_endpoint_delays_but_does_not_fail() {
    let env = start(Setup::default()).await;
    env.sandbox
        .set_token_fault_times(TokenFault::Delay { millis: 800 }, 1);
    assert_eq!(env.get("/api/incidents").await.status(), 200);
}

#[tokio::test]
async fn the_upstreams_time_starts_when_the_request_is_sent_not_before_its_token() {
    // A token fetch of 1.5 s, then an upstream answering in 1 s, with a 2 s request timeout:
    // the upstream had its 2 s (the fetch's time is not taken from it).
    let env = start(Setup {
        server: "request_timeout_secs = 2".into(),
        ..Setup::default()
    })
    .await;
    env.sandbox
        .set_token_fault_times(TokenFault::Delay { millis: 1500 }, 1);
    let resp = env.get("/api/_test/slow?millis=1000").await;
    assert_eq!(resp.status(), 200, "{:?}", TestEnv::code(&resp));
}

#[tokio::test]
async fn an_upstream_that_breaks_mid_body_ends_the_client_body_with_an_error() {
    let env = start(Setup::default()).await;
    env.sandbox.set_api_fault_times(ApiFault::ResetMidBody, 1);
    let resp = env.get("/api/incidents").await;
    // A small JSON body is read whole (to rewrite its links), so the break is seen before the
    // head is sent: 502. Streamed, the client's body ends with an error. Never a clean 200.
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamUnavailable"));
    let env = common::start_edited(Setup::default(), |t| {
        t.replace(
            "credential = \"app\"\n",
            "credential = \"app\"\nrewrite_links = false\n",
        )
    })
    .await;
    env.sandbox.set_api_fault_times(ApiFault::ResetMidBody, 1);
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.is_err(),
        "a truncated body must not look complete"
    );
    settles_to_zero(&env).await;
    assert_eq!(env.get("/api/incidents").await.status(), 200, "recovered");
}

#[tokio::test]
async fn a_stalled_or_failing_upstream_gives_504_or_its_503() {
    let env = start(Setup {
        server: "request_timeout_secs = 1".into(),
        ..Setup::default()
    })
    .await;
    env.sandbox
        .set_api_fault_times(ApiFault::Stall { millis: 3000 }, 1);
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamTimeout"));
    env.sandbox.set_api_fault_times(
        ApiFault::Status {
            status: 503,
            retry_after: None,
        },
        1,
    );
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 503);
    assert!(TestEnv::code(&resp).is_none());
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    settles_to_zero(&env).await;
}

#[tokio::test]
async fn clients_that_go_away_mid_download_or_mid_upload_leave_nothing_behind() {
    let env = start(Setup::default()).await;
    let mut resp = env.get("/api/_test/download?bytes=536870912").await;
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(vec![1u8; 100_000])).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| {
            (
                item.map(|v| http_body::Frame::data(bytes::Bytes::from(v))),
                rx,
            )
        })
    });
    let http = env.http.clone();
    let url = format!("{}/api/_test/upload", env.base);
    let upload = tokio::spawn(async move {
        http.post(url)
            .body(reqwest::Body::wrap(http_body_util::StreamBody::new(stream)))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    upload.abort();
    drop(tx);
    settles_to_zero(&env).await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
}

/// Reads one HTTP/1.1 answer head from `s`.
async fn answer_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test]
async fn an_upload_answered_before_it_was_read_is_drained_or_the_connection_closed() {
    use tokio::io::AsyncWriteExt;
    let env = start(Setup::default()).await;
    env.sandbox.set_token_fault(Some(TokenFault::Status {
        status: 500,
        retry_after_secs: None,
        error: None,
        aadsts: None,
    }));
    // An upload too large to keep, of known length: the proxy answers (token unavailable)
    // before it has read it, reads the rest in the background, and keeps the connection.
    let mut s = tokio::net::TcpStream::connect(env.proxy.proxy_addr)
        .await
        .unwrap();
    let size = 1024 * 1024;
    s.write_all(
        format!(
            "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&vec![b'x'; size]).await.unwrap();
    let head = answer_head(&mut s).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut body)
        .await
        .unwrap();
    s.write_all(b"GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let head = answer_head(&mut s).await;
    assert!(
        head.starts_with("http/1.1 503"),
        "the connection carried on: {head}"
    );
    // Of unknown length (chunked): not drained; the answer says the connection closes.
    let mut s = tokio::net::TcpStream::connect(env.proxy.proxy_addr)
        .await
        .unwrap();
    s.write_all(
        b"POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b'x'; 128 * 1024];
    s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&chunk).await.unwrap();
    s.write_all(b"\r\n").await.unwrap();
    let head = answer_head(&mut s).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}
