//! Forwarding through the proxy to the sandbox: routes, tenants, header hygiene, streaming,
//! pass-through of throttling and redirects, and the errors the proxy makes itself.

mod common;

use common::{Setup, TestEnv, json, start};
use defender_sandbox::{self as sandbox, ApiFault};

#[tokio::test]
async fn forwards_with_a_bearer_for_the_home_tenant() {
    let env = start(Setup::default()).await;
    let resp = env.get("/api/incidents?$top=5").await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    let items = body["value"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(
        items.iter().all(|i| i["tenantId"] == sandbox::TENANT_A),
        "{body}"
    );
    let seen = env.sandbox.last_api_request().unwrap();
    assert!(seen.header("authorization").unwrap().starts_with("Bearer "));
}

#[tokio::test]
async fn the_tenant_header_selects_a_partner_tenant_by_alias_or_guid() {
    let env = start(Setup::default()).await;
    for name in ["contoso", sandbox::TENANT_B] {
        let resp = env
            .http
            .get(format!("{}/api/machines?$top=2", env.base))
            .header("x-tenant-id", name)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = json(resp).await;
        assert!(
            body["value"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["tenantId"] == sandbox::TENANT_B),
            "{body}"
        );
    }
}

#[tokio::test]
async fn tenants_not_allowed_or_malformed_are_refused_before_any_token_request() {
    let env = start(Setup::default()).await;
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("x-tenant-id", "33333333-3333-3333-3333-333333333333")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TenantNotAllowed"));
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("x-tenant-id", "a b;c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("BadTenant"));
    let body = json(resp).await;
    assert_eq!(body["error"]["code"], "BadTenant");
    assert!(
        body["error"]["target"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(env.sandbox.token_requests(), 0);
}

#[tokio::test]
async fn headers_are_cleaned_and_the_prefix_stripped() {
    let env = start(Setup::default()).await;
    // With few fields the proxy forwards them as they came; with more than it keeps by
    // position (32), through a header map: both must clean the same.
    for padding in [0, 40] {
        let mut req = env
            .http
            .get(format!("{}/mde/api/_test/echo/x?a=1&b=%20", env.base))
            .header("authorization", "Bearer client-supplied")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("X-Tenant-ID", "contoso")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("x-keep", "yes")
            .header("client-request-id", "my-id-123");
        for i in 0..padding {
            req = req.header(format!("x-pad-{i}"), "p");
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["client-request-id"], "my-id-123");
        let echo = json(resp).await;
        assert_eq!(echo["path"], "/api/_test/echo/x");
        assert_eq!(echo["query"], "a=1&b=%20");
        let headers = &echo["headers"];
        assert_eq!(headers["authorization"].as_array().unwrap().len(), 1);
        let auth = headers["authorization"][0].as_str().unwrap();
        assert!(auth.starts_with("Bearer ") && auth != "Bearer client-supplied");
        for gone in ["proxy-authorization", "x-tenant-id", "x-hop", "connection"] {
            assert!(
                headers.get(gone).is_none(),
                "{gone} reached the upstream: {headers}"
            );
        }
        assert_eq!(headers["x-keep"][0], "yes");
        assert_eq!(headers["client-request-id"].as_array().unwrap().len(), 1);
        assert_eq!(headers["client-request-id"][0], "my-id-123");
        assert_eq!(headers["host"].as_array().unwrap().len(), 1);
        assert_eq!(headers["host"][0], env.sandbox.addr().to_string());
        if padding > 0 {
            assert_eq!(headers["x-pad-39"][0], "p");
        }
    }
}

#[tokio::test]
async fn a_request_id_is_generated_when_the_client_sends_none() {
    let env = start(Setup::default()).await;
    let resp = env.get("/api/_test/echo/x").await;
    let id = resp.headers()["client-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "{id}");
    let echo = json(resp).await;
    assert_eq!(echo["headers"]["client-request-id"][0], id.as_str());
}

#[tokio::test]
async fn no_route_is_a_defender_shaped_404() {
    let env = common::start_edited(Setup::default(), |t| {
        t.replace("prefix = \"/\"\n", "prefix = \"/xdr/\"\n")
    })
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("NoRoute"));
    assert_eq!(json(resp).await["error"]["code"], "NoRoute");
}

/// Throttling the request's wait budget cannot cover (here `server.max_wait_secs`, 60 s, on a
/// route without a limit) is passed on at once.
#[tokio::test]
async fn upstream_throttling_beyond_the_wait_budget_passes_through_with_retry_after() {
    let env = start(Setup::default()).await;
    env.sandbox.set_api_fault_times(
        ApiFault::Status {
            status: 429,
            retry_after: Some("70".into()),
        },
        1,
    );
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "70");
    assert!(
        TestEnv::code(&resp).is_none(),
        "an upstream answer is not the proxy's error"
    );
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let env = start(Setup::default()).await;
    let resp = env.get("/api/_test/redirect").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://example.invalid/elsewhere"
    );
}

#[tokio::test]
async fn an_8_mib_upload_and_a_large_download_stream_through() {
    let env = start(Setup::default()).await;
    let body = vec![7u8; 8 * 1024 * 1024];
    let resp = env
        .http
        .post(format!("{}/api/_test/upload", env.base))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["bytes"], 8 * 1024 * 1024);
    let n: u64 = 64 * 1024 * 1024;
    let mut resp = env.get(&format!("/api/_test/download?bytes={n}")).await;
    assert_eq!(resp.status(), 200);
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len() as u64;
    }
    assert_eq!(total, n);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let env = start(Setup {
        server: "max_request_body_bytes = 1024".into(),
        ..Setup::default()
    })
    .await;
    let resp = env
        .http
        .post(format!("{}/api/_test/upload", env.base))
        .body(vec![1u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("BodyTooLarge"));
    // Without Content-Length (chunked), the limit still holds.
    let frames = (0..8).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![2u8; 512])))
    });
    let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let resp = env
        .http
        .post(format!("{}/api/_test/upload", env.base))
        .body(reqwest::Body::wrap(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let ok = env
        .http
        .post(format!("{}/api/_test/upload", env.base))
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_slow_upstream_times_out_with_504() {
    let env = start(Setup {
        server: "request_timeout_secs = 1".into(),
        ..Setup::default()
    })
    .await;
    let resp = env.get("/api/_test/slow?millis=3000").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamTimeout"));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = start(Setup {
        upstream: Some(format!("http://{closed}")),
        ..Setup::default()
    })
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamUnavailable"));
}

#[tokio::test]
async fn advanced_hunting_posts_are_forwarded_with_their_body() {
    let env = start(Setup::default()).await;
    let resp = env
        .http
        .post(format!("{}/api/advancedhunting/run", env.base))
        .json(&serde_json::json!({"Query": "DeviceInfo | take 3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert!(
        body["Results"].is_array() && body["Schema"].is_array(),
        "{body}"
    );
}
