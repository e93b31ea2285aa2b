//! HTTPS to the upstream and the identity provider is verified: a server whose certificate
//! chains to an unknown CA is refused, and `[tls] extra_ca_file` (a TLS-inspecting corporate
//! proxy's CA, say) makes it trusted.

mod common;

use std::sync::Arc;

use common::{Setup, TestEnv, fixture};

/// A TLS-terminating relay on 127.0.0.1 to `target`, with a certificate from the test CA.
async fn tls_relay(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let config = common::test_server_tls(&[]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// The sandbox and a proxy that reaches it over HTTPS through the relay: for the token
/// endpoint and the upstream when `idp_over_tls`, else for the upstream only.
async fn https_env(extra_ca: bool, idp_over_tls: bool) -> TestEnv {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = defender_sandbox::Sandbox::start(listener, Default::default())
        .await
        .unwrap();
    let https = format!(
        "https://localhost:{}",
        tls_relay(sandbox.addr()).await.port()
    );
    let authority = if idp_over_tls {
        https.clone()
    } else {
        sandbox.url()
    };
    let mut text = common::config_text(
        &authority,
        &Setup {
            upstream: Some(https),
            ..Setup::default()
        },
    );
    if extra_ca {
        text.push_str(&format!(
            "\n[tls]\nextra_ca_file = \"{}\"\n",
            fixture("test-only-ca.pem").display()
        ));
    }
    let config = defender_proxy::config::Config::from_toml(&text, &|_: &str| None).unwrap();
    let listeners = defender_proxy::Listeners::bind(&config).await.unwrap();
    let proxy = defender_proxy::Handle::spawn(config, listeners).unwrap();
    let base = format!("http://{}", proxy.proxy_addr);
    let admin = format!("http://{}", proxy.admin_addr.unwrap());
    TestEnv {
        sandbox,
        proxy,
        http: common::client(),
        base,
        admin,
    }
}

#[tokio::test]
async fn an_https_identity_provider_and_upstream_with_an_unknown_ca_are_refused() {
    let env = https_env(false, true).await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(
        resp.status(),
        503,
        "the token endpoint's certificate is not trusted"
    );
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenUnavailable"));
    assert_eq!(
        env.sandbox.token_requests(),
        0,
        "nothing was sent over the untrusted connection"
    );
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap();
    let ready: serde_json::Value = ready.json().await.unwrap();
    let reason = ready["credentials"]["app"].as_str().unwrap();
    for needle in [
        "https://localhost:",
        "/oauth2/v2.0/token: TLS: the certificate is from an unknown CA",
        "UnknownIssuer",
        "add its CA with [tls] extra_ca_file",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
    }
    let env = https_env(false, false).await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(
        resp.status(),
        502,
        "the upstream's certificate is not trusted"
    );
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("UpstreamUnavailable"));
    assert_eq!(env.sandbox.api_requests(), 0);
}

#[tokio::test]
async fn an_extra_ca_file_makes_a_corporate_ca_trusted() {
    let env = https_env(true, true).await;
    let resp = env.get("/api/incidents?$top=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.sandbox.token_requests(), 1);
    let seen = env.sandbox.last_api_request().unwrap();
    assert!(
        seen.header("host").unwrap().starts_with("localhost:"),
        "{seen:?}"
    );
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1; records the targets it was asked for.
async fn connect_proxy() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split_whitespace().next())
                else {
                    return;
                };
                log.lock().unwrap().push(target.to_string());
                let Ok(mut upstream) =
                    tokio::net::TcpStream::connect(target.replace("localhost", "127.0.0.1")).await
                else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_go_through_the_https_proxy_of_the_environment() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = defender_sandbox::Sandbox::start(listener, Default::default())
        .await
        .unwrap();
    let relay = tls_relay(sandbox.addr()).await;
    let (proxy_addr, seen) = connect_proxy().await;
    let https = format!("https://localhost:{}", relay.port());
    let mut text = common::config_text(
        &sandbox.url(),
        &Setup {
            upstream: Some(https),
            ..Setup::default()
        },
    )
    .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"");
    text.push_str(&format!(
        "\n[tls]\nextra_ca_file = \"{}\"\n",
        fixture("test-only-ca.pem").display()
    ));
    let dir = tempfile::tempdir().unwrap();
    let proxy_url = format!("http://{proxy_addr}");
    let env = [
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("NO_PROXY", ""),
        ("HTTP_PROXY", ""),
        ("ALL_PROXY", ""),
    ];
    let proxy = common::binary::Proxy::start_with_env(&text, dir.path(), "warn", &env).await;
    let resp = common::client()
        .get(format!("{}/api/incidents?$top=1", proxy.base))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let (code, logs) = proxy.terminate();
    assert_eq!(status, 200, "{logs}");
    assert_eq!(code, 0);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("localhost:{}", relay.port())],
        "one tunnel to the upstream"
    );
}

/// Issue 22: a token endpoint that cannot be reached is named, with the cause chain.
#[tokio::test]
async fn an_unreachable_token_endpoint_is_named_with_its_cause() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = common::start_edited(Setup::default(), |t| {
        t.replace(
            "[cloud]\nauthority_host = \"",
            &format!("[cloud]\nauthority_host = \"http://127.0.0.1:{port}\"\n# was: \""),
        )
    })
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 503);
    let ready: serde_json::Value = env
        .http
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reason = ready["credentials"]["app"].as_str().unwrap();
    let url = format!(
        "http://127.0.0.1:{port}/{}/oauth2/v2.0/token",
        defender_sandbox::TENANT_A
    );
    assert!(
        reason.contains(&format!("{url}: could not connect: ")),
        "{reason}"
    );
    assert!(reason.to_ascii_lowercase().contains("refused"), "{reason}");
}
