//! The proxy's own HTTP/1 server side: keep-alive and pipelining, chunked and `Expect:
//! 100-continue` uploads, HTTP/1.0 clients, HEAD, HTTP/2 with prior knowledge, and malformed
//! requests refused with a Defender-shaped error before anything reaches the upstream.

mod common;

use std::time::Duration;

use common::{Setup, TestEnv, raw, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let env = start(Setup::default()).await;
    let three = "GET /api/_test/echo/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
                 GET /api/_test/echo/second HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
                 GET /api/_test/echo/third HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, three.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    let (a, b, c) = (
        answer.find("/first").unwrap(),
        answer.find("/second").unwrap(),
        answer.find("/third").unwrap(),
    );
    assert!(a < b && b < c, "{answer}");
    assert_eq!(env.sandbox.api_requests(), 3);
}

#[tokio::test]
async fn a_chunked_upload_is_forwarded_whole() {
    let env = start(Setup::default()).await;
    let req = "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
               5\r\nhello\r\n6;ext=x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"bytes\":11}"), "{answer}");
}

#[tokio::test]
async fn a_badly_framed_chunked_body_is_refused_and_not_forwarded() {
    let env = start(Setup::default()).await;
    let req = "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("x-defender-proxy-error: BadRequest"),
        "{answer}"
    );
    assert_eq!(env.sandbox.api_requests(), 0);
}

#[tokio::test]
async fn expect_100_continue_gets_a_continue_before_the_body_is_sent() {
    let env = start(Setup::default()).await;
    let mut s = connect(&env).await;
    s.write_all(b"POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got))
        .await
        .expect("a 100 Continue within 5 s")
        .unwrap();
    assert_eq!(&got[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("{\"bytes\":5}"), "{rest}");
}

#[tokio::test]
async fn an_http10_client_gets_a_length_and_the_connection_closed() {
    let env = start(Setup::default()).await;
    let started = std::time::Instant::now();
    // `raw` reads until the connection closes (or 5 s pass).
    let answer = raw(
        env.proxy.proxy_addr,
        b"GET /api/incidents HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the connection stayed open"
    );
    // hyper answers an HTTP/1.0 request in HTTP/1.0, where closing is the default.
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-length: "), "{answer}");
    assert!(!lower.contains("transfer-encoding"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "the whole body, then the close");
}

#[tokio::test]
async fn a_head_request_keeps_the_length_and_the_connection() {
    let env = start(Setup::default()).await;
    let req = "HEAD /api/_test/download?bytes=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
               GET /api/_test/download?bytes=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, req.as_bytes()).await;
    let (head, get) = answer.split_at(answer.rfind("HTTP/1.1 200").unwrap());
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{answer}"
    );
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {answer:?}");
    assert!(get.ends_with("\r\n\r\n\x00\x01\x02"), "{get:?}");
}

/// Framing errors are answered by hyper before there is a request to route: a bare 400 and a
/// closed connection (no Defender-shaped body; see docs/SPEC.md).
#[tokio::test]
async fn malformed_requests_get_a_400_and_a_closed_connection() {
    let env = start(Setup::default()).await;
    for req in [
        "GARBAGE\r\n\r\n",
        "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: +5\r\n\r\nhello",
        "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
        "POST /api/_test/upload HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw(env.proxy.proxy_addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{req:?}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert_eq!(env.sandbox.api_requests(), 0);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let env = start(Setup::default()).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(format!("{}/api/incidents", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // The request ID comes back over HTTP/2 too: a new one, or the client's.
    let id = resp.headers()["client-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    let resp = h2
        .get(format!("{}/api/incidents", env.base))
        .header("client-request-id", "h2-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["client-request-id"], "h2-id-1");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_shutdown() {
    let env = start(Setup::default()).await;
    let mut s = connect(&env).await;
    s.write_all(b"GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    let n = s.read(&mut got).await.unwrap();
    assert!(got[..n].starts_with(b"HTTP/1.1 200"));
    let shutdown = tokio::time::timeout(Duration::from_secs(5), env.proxy.shutdown()).await;
    assert!(shutdown.is_ok(), "shutdown waits for no idle connection");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the idle connection was closed"
    );
}

/// Reads one answer (head and a `Content-Length` body) off `stream`.
/// A connection of its own to the proxy.
async fn connect(env: &TestEnv) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(env.proxy.proxy_addr)
        .await
        .unwrap()
}

async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8(body).unwrap()
}

/// After a read that drains the socket the proxy waits for the event loop, not for another
/// read; heads and bodies trickling in over a kept-alive connection must still all arrive.
#[tokio::test]
async fn requests_trickling_in_on_a_kept_alive_connection_are_all_served() {
    let env = start(Setup::default()).await;
    let mut s = connect(&env).await;
    s.set_nodelay(true).unwrap();
    let pieces: [&[&str]; 3] = [
        &[
            "GET /api/_test/echo/one HT",
            "TP/1.1\r\nHost: 127.0",
            ".0.1\r\n",
            "\r\n",
        ],
        &[
            "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\n\r\n",
            "hello",
            " world",
        ],
        &["GET /api/_test/echo/three HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"],
    ];
    tokio::time::timeout(Duration::from_secs(10), async {
        for (i, request) in pieces.iter().enumerate() {
            for piece in request.iter() {
                s.write_all(piece.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let answer = read_answer(&mut s).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
            match i {
                0 => assert!(answer.contains("/one"), "{answer}"),
                1 => assert!(answer.ends_with("{\"bytes\":11}"), "{answer}"),
                _ => assert!(answer.contains("/three"), "{answer}"),
            }
        }
    })
    .await
    .expect("every request answered");
    assert_eq!(env.sandbox.api_requests(), 3);
}

/// A connection reads each head's fields into the box the head before used: a request must
/// carry its own fields only, and its own ID.
#[tokio::test]
async fn each_request_on_a_kept_alive_connection_carries_only_its_own_fields() {
    let env = start(Setup::default()).await;
    let mut s = connect(&env).await;
    let first = "GET /api/_test/echo/one HTTP/1.1\r\nHost: 127.0.0.1\r\nX-First: 1\r\n\
                 X-Also-First: 2\r\nClient-Request-Id: first-request\r\nAccept: text/plain\r\n\r\n";
    let second = "GET /api/_test/echo/two HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Second: 3\r\n\r\n";
    let mut answers = Vec::new();
    for request in [first, second] {
        s.write_all(request.as_bytes()).await.unwrap();
        answers.push(read_answer(&mut s).await);
    }
    let echoed = |answer: &str| -> serde_json::Value {
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap()
    };
    let (one, two) = (echoed(&answers[0]), echoed(&answers[1]));
    assert_eq!(one["headers"]["x-first"][0], "1", "{one}");
    assert_eq!(
        one["headers"]["client-request-id"][0], "first-request",
        "{one}"
    );
    assert!(
        answers[0].contains("client-request-id: first-request"),
        "{}",
        answers[0]
    );
    assert_eq!(two["headers"]["x-second"][0], "3", "{two}");
    for name in ["x-first", "x-also-first", "accept"] {
        assert!(
            two["headers"].get(name).is_none(),
            "{name} carried over: {two}"
        );
    }
    let id = two["headers"]["client-request-id"][0].as_str().unwrap();
    assert_ne!(id, "first-request", "{two}");
    assert_eq!(id.len(), 36, "a new UUID: {two}");
}
