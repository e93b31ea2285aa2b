//! HTTPS to the upstream and the identity provider is verified: a server whose certificate
//! chains to an unknown CA is refused, and `[tls] extra_ca_file` (a TLS-inspecting corporate
//! proxy's CA, say) makes it trusted.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Setup, TestEnv};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A TLS-terminating relay on 127.0.0.1 to `target`, with a certificate from the test CA.
async fn tls_relay(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("test-only-server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("test-only-server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
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
    let sandbox = defender_proxy::sandbox::Sandbox::start(listener, Default::default())
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
