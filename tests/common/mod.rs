//! Shared set-up of the integration tests: the sandbox and the proxy on 127.0.0.1:0.
#![allow(dead_code)]

pub mod binary;
pub mod python;
pub mod redis_server;

use defender_proxy::config::Config;
use defender_proxy::{Handle, Listeners};
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};

/// A running sandbox and proxy.
pub struct TestEnv {
    pub sandbox: Sandbox,
    pub proxy: Handle,
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT` of the proxy.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
}

/// What to change in the default test config.
#[derive(Default)]
pub struct Setup {
    pub sandbox: SandboxOptions,
    /// Lines added to `[server]`.
    pub server: String,
    /// The client secret the proxy uses (default: the sandbox's).
    pub secret: Option<String>,
    /// Extra TOML appended at the end (routes, limits, ...).
    pub extra: String,
    /// Upstream of the routes instead of the sandbox.
    pub upstream: Option<String>,
}

/// The test config for a sandbox at `url`.
pub fn config_text(url: &str, setup: &Setup) -> String {
    let secret = setup
        .secret
        .clone()
        .unwrap_or_else(|| sandbox::DEFAULT_CLIENT_SECRET.to_string());
    let upstream = setup.upstream.clone().unwrap_or_else(|| url.to_string());
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace_secs = 5
{warm_up}{server}

[cloud]
authority_host = "{url}"

[credentials.app]
type = "client_secret"
tenant_id = "{tenant_a}"
client_id = "{client_id}"
client_secret = "{secret}"

[credentials.app.tenants]
contoso = "{tenant_b}"

[[route]]
name = "defender"
prefix = "/"
upstream = "{upstream}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"

[[route]]
name = "mde"
prefix = "/mde/"
strip_prefix = true
upstream = "{upstream}"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"

{extra}
"#,
        server = setup.server,
        // Tests count token requests; the warm-up's are tested in tests/readiness.rs.
        warm_up = if setup.server.contains("warm_up") {
            ""
        } else {
            "warm_up = false\n"
        },
        tenant_a = sandbox::TENANT_A,
        tenant_b = sandbox::TENANT_B,
        client_id = sandbox::DEFAULT_CLIENT_ID,
        extra = setup.extra,
    )
}

/// Starts a sandbox, then the proxy wired to it.
pub async fn start(setup: Setup) -> TestEnv {
    start_edited(setup, |text| text).await
}

/// Like `start`, with the config text edited first.
pub async fn start_edited(setup: Setup, edit: impl FnOnce(String) -> String) -> TestEnv {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(listener, setup.sandbox.clone())
        .await
        .unwrap();
    let text = edit(config_text(&sandbox.url(), &setup));
    let config = Config::from_toml(&text, &|_: &str| None).expect("test config is valid");
    let listeners = Listeners::bind(&config).await.unwrap();
    let proxy = Handle::spawn(config, listeners).unwrap();
    let base = format!("http://{}", proxy.proxy_addr);
    let admin = format!("http://{}", proxy.admin_addr.unwrap());
    TestEnv {
        sandbox,
        proxy,
        http: client(),
        base,
        admin,
    }
}

/// A plain HTTP client that ignores proxy variables and never follows redirects.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl TestEnv {
    /// GET `path` through the proxy.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text of the admin listener.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (at most 10 s) until the proxy counts `n` requests in flight: a request sent
    /// from a spawned task has then reached the request path, however loaded the machine.
    pub async fn wait_in_flight(&self, n: i64) {
        for _ in 0..1000 {
            let text = self.metrics().await;
            let now: i64 = text
                .lines()
                .find(|l| l.starts_with("defender_proxy_inflight_requests "))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0);
            if now >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{n} requests never were in flight");
    }

    /// The error code header of a response.
    pub fn code(resp: &reqwest::Response) -> Option<String> {
        resp.headers()
            .get("x-defender-proxy-error")
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Reads the JSON body.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends raw bytes on a new connection and returns what came back (until close or timeout).
pub async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a sandbox and a proxy whose config lives in `dir/proxy.toml` and reloads from it
/// (polling every 100 ms); `edit` shapes the first config text.
pub async fn start_reloading(
    setup: Setup,
    dir: &std::path::Path,
    edit: impl FnOnce(String) -> String,
) -> (TestEnv, defender_proxy::reload::ReloadSource) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(listener, setup.sandbox.clone())
        .await
        .unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, edit(config_text(&sandbox.url(), &setup))).unwrap();
    let config = Config::load(&path, &|_: &str| None).expect("test config is valid");
    let listeners = Listeners::bind(&config).await.unwrap();
    let mut source = defender_proxy::reload::ReloadSource::new(path);
    source.poll_interval = std::time::Duration::from_millis(100);
    let proxy = Handle::spawn_with_reload(config, listeners, Some(source.clone())).unwrap();
    let base = format!("http://{}", proxy.proxy_addr);
    let admin = format!("http://{}", proxy.admin_addr.unwrap());
    (
        TestEnv {
            sandbox,
            proxy,
            http: client(),
            base,
            admin,
        },
        source,
    )
}

/// A test-only fixture under `tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// TLS settings of a test server for `localhost`, with a certificate from the test CA.
pub fn test_server_tls(alpn: &[&[u8]]) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("test-only-server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("test-only-server-key.pem")).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The names of the threads of process `pid` ("self" for this one), on Linux.
pub fn thread_names(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}
