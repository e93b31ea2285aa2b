//! Managed identity: IMDS (with `Metadata: true`, user-assigned selection, retries while it
//! starts) and App Service (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`), never through a proxy.

mod common;

use common::binary::Proxy;
use common::{Setup, TestEnv, json, start_edited};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions, TokenFault};

fn managed(endpoint: &str, extra: &str) -> impl FnOnce(String) -> String {
    let block = format!(
        "[credentials.app]\ntype = \"managed_identity\"\nendpoint = \"{endpoint}\"\n{extra}\n"
    );
    move |t: String| {
        let start = t.find("[credentials.app]").unwrap();
        let end = t.find("[[route]]").unwrap();
        format!("{}{block}\n{}", &t[..start], &t[end..])
    }
}

async fn sandbox_with(opts: SandboxOptions) -> Sandbox {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        opts,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn imds_gives_tokens_for_the_system_identity() {
    let env = start_edited(Setup::default(), |t| {
        let url = sandbox_url_of(&t);
        managed(&format!("{url}/metadata/identity/oauth2/token"), "")(t)
    })
    .await;
    let resp = env.get("/api/incidents?$top=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["value"][0]["tenantId"], sandbox::TENANT_A);
    assert_eq!(env.get("/mde/api/machines?$top=1").await.status(), 200);
    assert_eq!(
        env.sandbox.token_requests(),
        2,
        "one token per resource, cached"
    );
    let resp = env
        .http
        .get(format!("{}/api/incidents", env.base))
        .header("x-tenant-id", "contoso")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "a managed identity acts for its own tenant only"
    );
}

fn sandbox_url_of(t: &str) -> String {
    t.split("authority_host = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_user_assigned_identity_is_selected_by_client_id() {
    let sandbox = SandboxOptions {
        managed_identities: vec![sandbox::MANAGED_IDENTITY_ID.into(), "uai-0001".into()],
        ..SandboxOptions::default()
    };
    let env = start_edited(
        Setup {
            sandbox: sandbox.clone(),
            ..Setup::default()
        },
        |t| {
            let url = sandbox_url_of(&t);
            managed(
                &format!("{url}/metadata/identity/oauth2/token"),
                "client_id = \"uai-0001\"",
            )(t)
        },
    )
    .await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let env = start_edited(
        Setup {
            sandbox,
            ..Setup::default()
        },
        |t| {
            let url = sandbox_url_of(&t);
            managed(
                &format!("{url}/metadata/identity/oauth2/token"),
                "client_id = \"not-on-this-vm\"",
            )(t)
        },
    )
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
}

#[tokio::test]
async fn imds_404_and_410_while_starting_are_retried() {
    let env = start_edited(Setup::default(), |t| {
        let url = sandbox_url_of(&t);
        managed(&format!("{url}/metadata/identity/oauth2/token"), "")(t)
    })
    .await;
    env.sandbox.set_token_fault_times(
        TokenFault::Status {
            status: 404,
            retry_after_secs: None,
            error: None,
            aadsts: None,
        },
        1,
    );
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let env2 = start_edited(Setup::default(), |t| {
        let url = sandbox_url_of(&t);
        managed(&format!("{url}/metadata/identity/oauth2/token"), "")(t)
    })
    .await;
    env2.sandbox.set_token_fault_times(
        TokenFault::Status {
            status: 410,
            retry_after_secs: None,
            error: None,
            aadsts: None,
        },
        1,
    );
    assert_eq!(env2.get("/api/incidents").await.status(), 200);
    assert_eq!(env2.sandbox.token_requests(), 2);
    assert_eq!(env.sandbox.token_requests(), 2);
}

#[tokio::test]
async fn app_service_uses_its_endpoint_and_header_and_no_proxy_is_ever_used() {
    let sb = sandbox_with(SandboxOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy_url = format!("http://{closed}");
    let text = common::config_text(&sb.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    // Two credentials: the managed identity (App Service) on /mde/, a client secret elsewhere.
    let text = text.replace(
        "[[route]]\nname = \"mde\"",
        "[credentials.mi]\ntype = \"managed_identity\"\n\n[[route]]\nname = \"mde\"",
    );
    let text = {
        let i = text.find("name = \"mde\"").unwrap();
        let (head, tail) = text.split_at(i);
        format!(
            "{head}{}",
            tail.replacen("credential = \"app\"", "credential = \"mi\"", 1)
        )
    };
    let msi = format!("{}/msi/token", sb.url());
    let env = [
        ("IDENTITY_ENDPOINT", msi.as_str()),
        ("IDENTITY_HEADER", "sandbox-identity-header"),
        ("HTTP_PROXY", proxy_url.as_str()),
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
        ("NO_PROXY", ""),
    ];
    let proxy = Proxy::start_with_env(&text, dir.path(), "warn", &env).await;
    let http = common::client();
    let mi = http
        .get(format!("{}/mde/api/machines?$top=1", proxy.base))
        .send()
        .await
        .unwrap();
    let secret = http
        .get(format!("{}/api/incidents?$top=1", proxy.base))
        .send()
        .await
        .unwrap();
    let (mi_status, secret_status) = (mi.status(), secret.status());
    let (code, logs) = proxy.terminate();
    assert_eq!(
        mi_status, 200,
        "managed identity bypasses the proxy: {logs}"
    );
    assert_eq!(
        secret_status, 503,
        "the Entra client honours HTTP(S)_PROXY, here a dead one: {logs}"
    );
    assert_eq!(code, 0);
}
