//! Paging links come back through the proxy: `@odata.nextLink`/`@odata.deltaLink` and
//! `Location` pointing at the upstream are rewritten to the proxy's origin and the route's
//! prefix, while streaming, with bounded memory; nothing else changes.

mod common;

use common::binary::Proxy;
use common::{Setup, TestEnv, json, start, start_edited};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};

#[tokio::test]
async fn following_next_links_through_the_proxy_lists_every_incident_of_the_tenant() {
    let env = start(Setup::default()).await;
    let mut url = format!("{}/api/incidents?$top=50", env.base);
    let (mut pages, mut items) = (0, 0);
    loop {
        // The header on the first page only: the links carry the tenant.
        let mut request = env.http.get(&url);
        if pages == 0 {
            request = request.header("x-tenant-id", "contoso");
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = json(resp).await;
        let page = body["value"].as_array().unwrap();
        assert!(page.iter().all(|i| i["tenantId"] == sandbox::TENANT_B));
        items += page.len();
        pages += 1;
        match body["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}/tenants/contoso/api/incidents?", env.base)),
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

/// The repro of issue 22: a next link followed without the header answered from the home
/// tenant, mixing two customers' incidents in one list.
#[tokio::test]
async fn a_next_link_followed_without_the_header_stays_in_the_tenant() {
    let env = start(Setup::default()).await;
    let resp = env
        .http
        .get(format!("{}/api/incidents?$top=2", env.base))
        .header("x-tenant-id", "contoso")
        .send()
        .await
        .unwrap();
    let next = json(resp).await["@odata.nextLink"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        next.starts_with(&format!("{}/tenants/contoso/api/incidents?", env.base)),
        "{next}"
    );
    let page = json(env.http.get(&next).send().await.unwrap()).await;
    let items = page["value"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|i| i["tenantId"] == sandbox::TENANT_B),
        "{page}"
    );
}

#[tokio::test]
async fn every_route_has_a_tenant_scoped_form_with_the_headers_allowlist() {
    let env = start(Setup::default()).await;
    for path in [
        "/tenants/contoso/api/incidents?$top=3",
        &format!("/tenants/{}/mde/api/machines?$top=3", sandbox::TENANT_B),
        "/tenants/CONTOSO/mde/api/alerts?$top=3",
    ] {
        let resp = env.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let body = json(resp).await;
        let items = body["value"].as_array().unwrap();
        assert!(!items.is_empty(), "{path}");
        assert!(
            items.iter().all(|i| i["tenantId"] == sandbox::TENANT_B),
            "{path}"
        );
    }
    let home = json(env.get("/tenants/home/api/incidents?$top=3").await).await;
    assert_eq!(home["value"][0]["tenantId"], sandbox::TENANT_A);
    let next = home["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("{}/tenants/home/api/incidents?", env.base)),
        "{next}"
    );
    let resp = env.get("/tenants/fabrikam/api/incidents").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TenantNotAllowed"));
    let resp = env.get("/tenants/a%20b/api/incidents").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("BadTenant"));
}

#[tokio::test]
async fn a_path_tenant_that_differs_from_the_header_is_a_conflict() {
    let env = start(Setup::default()).await;
    let send = |tenant: &'static str| {
        env.http
            .get(format!("{}/tenants/contoso/api/incidents?$top=1", env.base))
            .header("x-tenant-id", tenant)
            .send()
    };
    let resp = send("home").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TenantConflict"));
    let body = json(resp).await;
    assert_eq!(body["error"]["code"], "TenantConflict");
    let resp = send(sandbox::TENANT_B).await.unwrap();
    assert_eq!(resp.status(), 200, "the same tenant by GUID agrees");
}

#[tokio::test]
async fn home_in_the_header_selects_the_home_tenant_and_location_carries_the_tenant() {
    let env = start(Setup::default()).await;
    let resp = env
        .http
        .get(format!("{}/api/incidents?$top=1", env.base))
        .header("x-tenant-id", "home")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["value"][0]["tenantId"], sandbox::TENANT_A);
    let resp = env
        .http
        .get(format!("{}/mde/api/_test/redirect?to=self", env.base))
        .header("x-tenant-id", "contoso")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["location"],
        format!("{}/tenants/contoso/mde/api/incidents?$top=1", env.base)
    );
}
