//! `defender-proxy demo`: the sandbox (Entra ID and Defender API emulator) and the proxy wired
//! to it, offline, with curl commands to try.

use std::future::Future;

use tokio::net::TcpListener;

use crate::config::Config;
use defender_sandbox::{self as sandbox, Sandbox, SandboxOptions};
use crate::{Listeners, RunError};

/// The demo's config for a sandbox at `url`, with the proxy on `listen`.
pub fn config_text(url: &str, listen: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "127.0.0.1:0"

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
name = "mde"
prefix = "/mde/"
strip_prefix = true
upstream = "{url}"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"

[[route]]
name = "defender"
prefix = "/"
upstream = "{url}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
"#,
        tenant_a = sandbox::TENANT_A,
        tenant_b = sandbox::TENANT_B,
        client_id = sandbox::DEFAULT_CLIENT_ID,
        secret = sandbox::DEFAULT_CLIENT_SECRET,
    )
}

/// Runs the sandbox and the proxy until `shutdown`.
pub async fn run(listen: &str, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let sandbox = Sandbox::start(
        TcpListener::bind("127.0.0.1:0").await?,
        SandboxOptions::default(),
    )
    .await?;
    let config = Config::from_toml(&config_text(&sandbox.url(), listen), &|_: &str| None)?;
    let listeners = Listeners::bind(&config).await?;
    let proxy = format!("http://{}", listeners.proxy.local_addr()?);
    let admin = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?
        .map(|a| format!("http://{a}"));
    println!(
        "{}",
        banner(&proxy, admin.as_deref().unwrap_or("-"), &sandbox.url())
    );
    let result = crate::run(config, listeners, shutdown).await;
    sandbox.shutdown();
    result
}

fn banner(proxy: &str, admin: &str, sandbox: &str) -> String {
    format!(
        "defender-proxy demo\n  proxy    {proxy}\n  admin    {admin}  (/healthz /readyz /metrics)\n  sandbox  {sandbox}  (emulated Entra ID and Defender API)\n\n\
Try:\n  curl -s '{proxy}/api/incidents?$top=2'\n  curl -s '{proxy}/mde/api/machines?$top=2'\n  \
curl -s -H 'x-tenant-id: contoso' '{proxy}/api/alerts?$top=1'\n  \
curl -s -X POST '{proxy}/api/advancedhunting/run' -H 'content-type: application/json' -d '{{\"Query\":\"DeviceInfo | take 3\"}}'\n  \
curl -s '{admin}/metrics'\n\nPress Ctrl-C to stop."
    )
}
