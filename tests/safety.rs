//! The proxy is not an open proxy and not a DNS-rebinding or CSRF target: foreign Host and
//! Origin, absolute-form URIs, CONNECT, traversal and smuggling shapes get a 4xx and reach no
//! upstream; an inbound key, when configured, is required.

mod common;

use common::{Setup, TestEnv, raw, start};

async fn assert_refused(env: &TestEnv, request: &str, status: &str, code: &str) {
    let before = env.sandbox.api_requests();
    let answer = raw(env.proxy.proxy_addr, request.as_bytes()).await;
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{request:?} got {answer}"
    );
    if !code.is_empty() {
        assert!(
            answer.to_ascii_lowercase().contains(&format!(
                "x-defender-proxy-error: {}",
                code.to_ascii_lowercase()
            )),
            "{answer}"
        );
    }
    assert_eq!(
        env.sandbox.api_requests(),
        before,
        "{request:?} reached the upstream"
    );
}

#[tokio::test]
async fn a_foreign_host_header_is_refused() {
    let env = start(Setup::default()).await;
    assert_refused(
        &env,
        "GET /api/incidents HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "400",
        "BadHost",
    )
    .await;
    assert_refused(
        &env,
        "GET /api/incidents HTTP/1.1\r\nHost: evil.example:8080\r\nConnection: close\r\n\r\n",
        "400",
        "BadHost",
    )
    .await;
    let ok = raw(
        env.proxy.proxy_addr,
        b"GET /api/incidents HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // Host names have no case (RFC 9110 §4.2.3); one letter off is still another host.
    let ok = raw(
        env.proxy.proxy_addr,
        b"GET /api/incidents HTTP/1.1\r\nHost: LocalHost:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_refused(
        &env,
        "GET /api/incidents HTTP/1.1\r\nHost: localhosu:8080\r\nConnection: close\r\n\r\n",
        "400",
        "BadHost",
    )
    .await;
}

#[tokio::test]
async fn a_cross_origin_browser_request_is_refused() {
    let env = start(Setup::default()).await;
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("BadOrigin"));
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(env.sandbox.api_requests(), 1);
}

#[tokio::test]
async fn absolute_form_uris_to_other_hosts_and_connect_are_refused() {
    let env = start(Setup::default()).await;
    assert_refused(
        &env,
        "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "400",
        "BadHost",
    )
    .await;
    assert_refused(
        &env,
        "GET http://evil.example/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "400",
        "BadHost",
    )
    .await;
    assert_refused(
        &env,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
        "4",
        "",
    )
    .await;
    assert_refused(
        &env,
        "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nConnection: close\r\n\r\n",
        "405",
        "MethodNotAllowed",
    )
    .await;
}

#[tokio::test]
async fn path_traversal_is_refused() {
    let env = start(Setup::default()).await;
    for path in [
        "/mde/../api/incidents",
        "/mde/%2e%2e/api/incidents",
        "/mde/api%2fincidents",
        "/mde/.%2E/x",
    ] {
        assert_refused(
            &env,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
            "400",
            "",
        )
        .await;
    }
}

#[tokio::test]
async fn smuggling_shapes_are_refused() {
    let env = start(Setup::default()).await;
    // Both Content-Length and Transfer-Encoding: the chunked coding frames the body and the
    // length is dropped (RFC 9112 §6.3, as hyper does); the connection closes after the
    // answer, so the request hidden behind the body never runs.
    let both = "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/_test/echo/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, both.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("{\"bytes\":0}"),
        "the chunked body (empty) went up: {answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(
        env.sandbox.api_requests(),
        1,
        "only the upload reached the upstream"
    );
    let before = env.sandbox.api_requests();
    // Either order, and TE after CL in other spellings.
    let te_first = "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /api/_test/echo/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, te_first.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(env.sandbox.api_requests(), before + 1);
    let before = env.sandbox.api_requests();
    // A Transfer-Encoding whose last coding is not chunked cannot be framed.
    let not_chunked = "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n";
    assert_refused(&env, not_chunked, "400", "").await;
    // Obsolete line folding and a space before the colon are refused too.
    let folded = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n  folded\r\n\r\n";
    assert_refused(&env, folded, "400", "").await;
    let spaced =
        "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding : chunked\r\n\r\n";
    assert_refused(&env, spaced, "400", "").await;
    assert_eq!(env.sandbox.api_requests(), before);
    let double_cl = "POST /api/_test/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nContent-Length: 7\r\nConnection: close\r\n\r\nabcd";
    assert_refused(&env, double_cl, "400", "").await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let env = start(Setup::default()).await;
    let big = "a".repeat(100 * 1024);
    let req = format!(
        "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    // hyper refuses a head over the limits before there is a request: a bare 431.
    assert_refused(&env, &req, "431", "").await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n");
    assert_refused(&env, &req, "431", "").await;
}

#[tokio::test]
async fn crlf_or_non_ascii_in_the_tenant_header_is_refused() {
    let env = start(Setup::default()).await;
    let req = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tenant-Id: contöso\r\nConnection: close\r\n\r\n";
    assert_refused(&env, req, "400", "BadTenant").await;
    let injected = "GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tenant-Id: contoso\r\n\r\nGET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = raw(env.proxy.proxy_addr, injected.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_inbound_key_when_configured_is_required() {
    let env = start(Setup {
        server: "inbound_key = \"let-me-in\"".into(),
        ..Setup::default()
    })
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("Unauthenticated"));
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("x-defender-proxy-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = env
        .http
        .get(format!("{}/api/_test/echo/k", env.base))
        .header("x-defender-proxy-key", "let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = common::json(resp).await;
    assert!(
        echo["headers"].get("x-defender-proxy-key").is_none(),
        "the key reached the upstream"
    );
}
