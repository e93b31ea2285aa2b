//! The worker's upstream pool: keep-alive connections are reused, an upstream that closes an
//! idle connection costs no request, HTTP/2 (by ALPN) multiplexes requests on one connection,
//! and a request an upstream took is never sent twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Setup, TestEnv, fixture, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts connections and requests.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

async fn proxy_to(upstream: &str, extra: &str) -> TestEnv {
    common::start(Setup {
        upstream: Some(upstream.to_string()),
        server: "workers = 1".into(),
        extra: extra.into(),
        ..Setup::default()
    })
    .await
}

/// An HTTP/1.1 server that answers every request with its HTTP version.
async fn http1_upstream(counts: Arc<Counts>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let body = format!("{{\"version\":\"{:?}\"}}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused() {
    let counts = Arc::new(Counts::default());
    let env = proxy_to(&http1_upstream(counts.clone()).await, "").await;
    for i in 0..20 {
        let resp = env.get("/api/incidents").await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(json(resp).await["version"], "HTTP/1.1");
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 20);
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
}

/// Reads one request head (and no body) from `tcp`.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_an_idle_connection_costs_no_request() {
    // Answers one request per connection as keep-alive, then closes it shortly after.
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                if read_head(&mut tcp).await {
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    let body = b"{\"ok\":true}";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(body).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    let env = proxy_to(&url, "").await;
    for i in 0..5 {
        let resp = env.get("/api/incidents").await;
        assert_eq!(resp.status(), 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 5);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_took_is_never_sent_twice() {
    // Takes the request, then drops the connection without an answer.
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            if read_head(&mut tcp).await {
                c.requests.fetch_add(1, Ordering::SeqCst);
            }
            drop(tcp);
        }
    });
    let env = proxy_to(&url, "").await;
    let resp = env
        .http
        .post(format!("{}/api/machines/1/isolate", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamUnavailable"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(counts.requests.load(Ordering::SeqCst), 1, "sent once");
}

/// An HTTPS server offering only HTTP/2, with a certificate from the test CA.
async fn h2_upstream(counts: Arc<Counts>) -> String {
    let config = common::test_server_tls(&[b"h2"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, counts) = (acceptor.clone(), counts.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let h = req.headers();
                    let count = |n: &str| h.get_all(n).iter().count();
                    let body = format!(
                        "{{\"version\":\"{:?}\",\"authorization\":{},\"authorizations\":{},\"request_ids\":{},\"keep\":{},\"hop\":{}}}",
                        req.version(),
                        h.contains_key("authorization"),
                        count("authorization"),
                        count("client-request-id"),
                        count("x-keep"),
                        count("proxy-authorization") + count("connection") + count("x-hop"),
                    );
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_multiplex_concurrent_requests_on_one_connection() {
    let counts = Arc::new(Counts::default());
    let upstream = h2_upstream(counts.clone()).await;
    let ca = format!(
        "[tls]\nextra_ca_file = \"{}\"\n",
        fixture("test-only-ca.pem").display()
    );
    let env = proxy_to(&upstream, &ca).await;
    // The first request opens the connection; then ten at once share it. The client's fields
    // go over HTTP/2 as over HTTP/1.1: the proxy's bearer and request ID once, its own kept,
    // hop-by-hop ones and its credentials not.
    let first = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("authorization", "Bearer client-supplied")
        .header("proxy-authorization", "Basic x")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-keep", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let body = json(first).await;
    assert_eq!(
        (
            &body["authorizations"],
            &body["request_ids"],
            &body["keep"],
            &body["hop"]
        ),
        (&1.into(), &1.into(), &1.into(), &0.into()),
        "{body}"
    );
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let (http, url) = (env.http.clone(), format!("{}/api/incidents", env.base));
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    for r in requests {
        let resp = r.await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = json(resp).await;
        assert_eq!(body["version"], "HTTP/2.0");
        assert_eq!(body["authorization"], true);
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 11);
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
}

/// Answers the first request of each connection (keep-alive), then takes the next one and
/// closes the connection without an answer: a kept-alive connection the upstream dropped just
/// as the proxy reused it.
async fn one_answer_per_connection(counts: Arc<Counts>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                if !read_head(&mut tcp).await {
                    return;
                }
                counts.requests.fetch_add(1, Ordering::SeqCst);
                let body = b"{\"ok\":true}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                if read_head(&mut tcp).await {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    url
}

/// The upstream read the request and closed without answering: it may have acted on it, so
/// the request is not sent again, whatever its method (only a request that a pooled
/// connection never took is resent; see `an_upstream_closing_an_idle_connection_costs_no_request`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_took_and_dropped_is_never_sent_again() {
    let counts = Arc::new(Counts::default());
    let env = proxy_to(&one_answer_per_connection(counts.clone()).await, "").await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502, "a GET the upstream took is not resent");
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamUnavailable"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        counts.requests.load(Ordering::SeqCst),
        2,
        "each request seen once"
    );
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "no new connection for it"
    );
    assert_eq!(
        env.get("/api/incidents").await.status(),
        200,
        "then a fresh connection"
    );
    let resp = env
        .http
        .post(format!("{}/api/machines/1/isolate", env.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "a POST is not sent twice");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(counts.requests.load(Ordering::SeqCst), 4);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
}

/// An upstream that answers 413 as soon as it has a request head and closes without reading
/// the body; and one that answers in chunks with a Content-Length it must not trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_upload_is_passed_on() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut tcp).await {
                    return;
                }
                let body = "{\"error\":{\"code\":\"TooLarge\"}}";
                let answer = format!(
                    "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                // Closed with the body unread: the proxy's writes fail (reset). A moment
                // passes first: a reset that overtakes the answer on the wire loses it for any
                // client, which is TCP's race, not the proxy's.
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    let env = proxy_to(&url, "").await;
    let big = vec![b'x'; 8 * 1024 * 1024];
    let resp = env
        .http
        .post(format!("{}/api/upload", env.base))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("TooLarge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_is_passed_on_whole_and_its_connection_reused() {
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                while read_head(&mut tcp).await {
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    // A Content-Length beside the chunked coding must be ignored.
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\n";
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let env = proxy_to(&url, "").await;
    for _ in 0..3 {
        let resp = env.get("/api/anything").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "hello, world");
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 3);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
}

/// An upstream that answers every request on a kept-alive connection with `head` and "ok".
async fn fixed_head_upstream(head: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                while read_head(&mut tcp).await {
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(b"ok").await;
                }
            });
        }
    });
    url
}

/// Fields of the fixed answer below that must not reach the client.
const DROPPED: [&str; 5] = [
    "x-hop",
    "keep-alive",
    "upgrade",
    "proxy-authenticate",
    "trailer",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_own_fields_reach_the_client_as_they_came_but_hop_by_hop_ones() {
    // Every kind of field the proxy must drop, repeated fields, and fields it also sets
    // itself. hyper writes field names in lower case (they are case-insensitive, RFC 9110
    // §5.1), so values and order are compared, not the case of names.
    let url = fixed_head_upstream(
        "HTTP/1.1 200 OK\r\nServer: raw\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\nUpgrade: foo\r\nProxy-Authenticate: Basic\r\nTrailer: x\r\n\
         Set-Cookie: a=1\r\nset-cookie: b=2\r\nRequest-Id: up-1\r\nClient-Request-Id: from-upstream\r\n\
         Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let env = proxy_to(&url, "").await;

    // HTTP/1.1, as written on the wire.
    let addr = env.base.trim_start_matches("http://").parse().unwrap();
    let answer = common::raw(
        addr,
        b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "ok");
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    let has = |l: &str| lines.iter().filter(|x| x.eq_ignore_ascii_case(l)).count();
    for kept in [
        "Server: raw",
        "Set-Cookie: a=1",
        "set-cookie: b=2",
        "Request-Id: up-1",
        "Content-Type: text/plain",
        "content-length: 2",
        "connection: close",
    ] {
        assert_eq!(has(kept), 1, "{kept} once in:\n{head}");
    }
    let lower: Vec<String> = lines.iter().map(|l| l.to_ascii_lowercase()).collect();
    let cookies: Vec<_> = lower
        .iter()
        .filter(|l| l.starts_with("set-cookie"))
        .collect();
    assert_eq!(cookies, ["set-cookie: a=1", "set-cookie: b=2"], "in order");
    let ids: Vec<_> = lower
        .iter()
        .filter(|l| l.starts_with("client-request-id:"))
        .collect();
    assert_eq!(
        ids,
        ["client-request-id: from-upstream"],
        "the upstream's, once"
    );
    for gone in DROPPED {
        assert!(
            !lines
                .iter()
                .any(|l| l.to_ascii_lowercase().starts_with(&format!("{gone}:"))),
            "{gone} reached the client:\n{head}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("connection:"))
            .count(),
        1
    );

    // HTTP/2: the same fields, from the header map the answer gets there.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(format!("{}/api/x", env.base)).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let h = resp.headers();
    assert_eq!(h["server"], "raw");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(
        h.get_all("client-request-id").iter().collect::<Vec<_>>(),
        ["from-upstream"]
    );
    assert_eq!(h["request-id"], "up-1");
    for gone in DROPPED.iter().chain(&["connection"]) {
        assert!(h.get(*gone).is_none(), "{gone} reached the client: {h:?}");
    }
    assert_eq!(resp.text().await.unwrap(), "ok");
}

/// An HTTP/1.1 upstream that holds every answer until `together` requests are in, so each
/// comes on a connection of its own; `open` counts its connections still open.
async fn gathering_upstream(together: usize, open: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let gather = Arc::new(tokio::sync::Barrier::new(together));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            open.fetch_add(1, Ordering::SeqCst);
            let (open, gather) = (open.clone(), gather.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: http::Request<_>| {
                    let gather = gather.clone();
                    async move {
                        gather.wait().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_core_pool_keeps_only_its_share_of_idle_connections() {
    use defender_proxy::upstream::{Client, MAX_IDLE_PER_HOST};
    // One of 64 threads: its share of the idle connections is 256 / 64 = 4.
    let (threads, together) = (64, 10);
    let share = MAX_IDLE_PER_HOST / threads;
    let open = Arc::new(AtomicUsize::new(0));
    let url = gathering_upstream(together, open.clone()).await;
    let shared = Client::new(defender_proxy::tls::client_config(None).unwrap());
    let client = shared.another(threads);
    let answers = (0..together).map(|_| {
        let req = http::Request::get(format!("{url}/api/incidents"))
            .body(defender_proxy::body::empty())
            .unwrap();
        client.send(req)
    });
    for answer in futures_util::future::join_all(answers).await {
        let body = http_body_util::BodyExt::collect(answer.unwrap().into_body()).await;
        assert_eq!(body.unwrap().to_bytes(), "{}");
    }
    // The connections past the share are closed as they come back to the pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > share && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.load(Ordering::SeqCst), share, "connections left open");
    // The kept ones are idle, not closed: they stay for the pool's idle timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open.load(Ordering::SeqCst), share, "connections left open");
}
