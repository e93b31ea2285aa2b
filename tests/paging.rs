//! Paging links come back through the proxy: `@odata.nextLink`/`@odata.deltaLink` and
//! `Location` pointing at the upstream are rewritten to the proxy's origin and the route's
//! prefix, while streaming, with bounded memory; nothing else changes.

mod common;

use common::binary::Proxy;
use common::{Setup, json, start, start_edited};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};

#[tokio::test]
async fn following_next_links_through_the_proxy_lists_every_incident_of_the_tenant() {
    let env = start(Setup::default()).await;
    let mut url = format!("{}/api/incidents?$top=50", env.base);
    let (mut pages, mut items) = (0, 0);
    loop {
        let resp = env
            .http
            .get(&url)
            .header("x-tenant-id", "contoso")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = json(resp).await;
        let page = body["value"].as_array().unwrap();
        assert!(page.iter().all(|i| i["tenantId"] == sandbox::TENANT_B));
        items += page.len();
        pages += 1;
        match body["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}/api/incidents?", env.base)),
                    "{next}"
                );
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(
        (pages, items),
        (3, SandboxOptions::default().incidents_per_tenant)
    );
}

#[tokio::test]
async fn next_links_keep_the_stripped_prefix_of_the_route() {
    let env = start(Setup::default()).await;
    let body = json(env.get("/mde/api/machines?$top=30").await).await;
    let next = body["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("{}/mde/api/machines?", env.base)),
        "{next}"
    );
    let again = json(env.http.get(next).send().await.unwrap()).await;
    assert_eq!(again["value"].as_array().unwrap().len(), 30);
    let context = body["@odata.context"].as_str().unwrap();
    assert!(
        context.starts_with(&env.sandbox.url()),
        "other fields are untouched: {context}"
    );
}

#[tokio::test]
async fn rewriting_can_be_turned_off_per_route() {
    let env = start_edited(Setup::default(), |t| {
        t.replace(
            "credential = \"app\"\n\n[[route]]",
            "credential = \"app\"\nrewrite_links = false\n\n[[route]]",
        )
    })
    .await;
    let body = json(env.get("/api/incidents?$top=5").await).await;
    let next = body["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with(&env.sandbox.url()), "{next}");
}

#[tokio::test]
async fn location_is_rewritten_only_when_it_points_upstream() {
    let env = start(Setup::default()).await;
    let resp = env.get("/mde/api/_test/redirect?to=self").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/mde/api/incidents?$top=1", env.base)
    );
    let resp = env.get("/api/_test/redirect").await;
    assert_eq!(
        resp.headers()["location"],
        "https://example.invalid/elsewhere"
    );
}

#[tokio::test]
async fn small_bodies_keep_an_exact_content_length_and_non_json_is_untouched() {
    let env = start(Setup::default()).await;
    let resp = env.get("/api/incidents?$top=3").await;
    let length: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = resp.text().await.unwrap();
    assert_eq!(length, text.len());
    assert!(text.contains(&env.base));
    let resp = env.get("/api/_test/download?bytes=100000").await;
    assert_eq!(resp.headers()["content-length"], "100000");
    let bytes = resp.bytes().await.unwrap();
    assert!(
        bytes.iter().enumerate().all(|(i, b)| *b == i as u8),
        "byte for byte"
    );
}

#[tokio::test]
async fn a_200_mib_json_body_is_rewritten_while_streaming_with_flat_memory() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sb = Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SandboxOptions::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    let proxy = Proxy::start(&text, dir.path(), "warn").await;
    let n: u64 = 200 << 20;
    let mut resp = common::client()
        .get(format!("{}/mde/api/_test/json?bytes={n}", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "the length changes, so it is dropped"
    );
    let (mut head, mut tail, mut total) = (Vec::new(), Vec::new(), 0u64);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len() as u64;
        if head.len() < 200 {
            head.extend_from_slice(&chunk[..chunk.len().min(200)]);
        }
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(200);
        tail.drain(..keep);
    }
    let peak = proxy.peak_rss_kib();
    let base = proxy.base.clone();
    let (code, _) = proxy.terminate();
    assert_eq!(code, 0);
    let head = String::from_utf8_lossy(&head);
    let tail = String::from_utf8_lossy(&tail);
    assert!(
        head.starts_with(&format!(
            r#"{{"@odata.nextLink":"{}/mde/api/_test/json?page=2""#,
            base
        )),
        "{head}"
    );
    assert!(
        tail.ends_with(&format!(
            r#""@odata.deltaLink":"{}/mde/api/_test/json?delta=1"}}"#,
            base
        )),
        "{tail}"
    );
    let growth = (base.len() + 4) as i64 - sb.url().len() as i64;
    assert_eq!(total as i64, n as i64 + 2 * growth);
    eprintln!("proxy peak RSS while rewriting a 200 MiB JSON body: {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}
