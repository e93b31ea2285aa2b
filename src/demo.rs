//! `defender-proxy demo` and `defender-proxy sandbox`: the built-in sandbox (Entra ID and
//! Defender API emulator) alone, or with the proxy running a config against it, offline.

mod retarget;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use defender_sandbox::{self as sandbox, DeviceStatus, Sandbox, SandboxOptions};

pub use retarget::retarget;

use crate::config::{Config, CredentialType, Env, ProcessEnv};
use crate::{AppState, Listeners, RunError};

/// Where `sandbox` and the demo's sandbox listen unless told otherwise.
pub const SANDBOX_LISTEN: &str = "127.0.0.1:8090";

/// The shipped `proxy.toml`, which the demo runs when given no config.
pub const SHIPPED_CONFIG: &str = include_str!("../proxy.toml");

/// What `defender-proxy demo` runs.
#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    /// The config file; `None` runs [`SHIPPED_CONFIG`].
    pub config: Option<PathBuf>,
    /// Overrides `server.listen`.
    pub listen: Option<String>,
    /// Overrides `server.admin_listen`.
    pub admin_listen: Option<String>,
    /// The sandbox's address ([`SANDBOX_LISTEN`] when empty).
    pub sandbox_listen: String,
    /// Seed of the sandbox's data.
    pub seed: u64,
}

/// The demo's environment: the process's, except that the three azure-identity variables the
/// shipped config reads default to the sandbox's app when unset.
struct DemoEnv;

impl Env for DemoEnv {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv.var(name).or_else(|| {
            let value = match name {
                "AZURE_TENANT_ID" => sandbox::TENANT_A,
                "AZURE_CLIENT_ID" => sandbox::DEFAULT_CLIENT_ID,
                "AZURE_CLIENT_SECRET" => sandbox::DEFAULT_CLIENT_SECRET,
                _ => return None,
            };
            Some(value.to_owned())
        })
    }
}

/// The shipped config, with the sandbox's second tenant as the partner alias `contoso` that
/// the README's examples use (the shipped file has it commented out).
fn shipped_config() -> Result<Config, crate::config::ConfigError> {
    let mut config = Config::from_toml(SHIPPED_CONFIG, &DemoEnv)?;
    if let Some(app) = config.credentials.get_mut("app") {
        app.tenants
            .entry("contoso".to_owned())
            .or_insert_with(|| sandbox::TENANT_B.to_owned());
    }
    Ok(config)
}

/// Runs the sandbox and the proxy with the config pointed at it, until `shutdown`.
///
/// # Errors
///
/// A config that does not load, a listener that does not bind, a device code sign-in that
/// fails, or the proxy failing.
pub async fn run(opts: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let listener = crate::bind_named(
        or_default(&opts.sandbox_listen),
        "sandbox",
        "--sandbox-listen",
    )
    .await?;
    let url = loopback_url(listener.local_addr()?);
    // A listener that does not bind names the flag that moved it, else the config's key.
    let settings = [
        if opts.listen.is_some() {
            "--listen"
        } else {
            "server.listen"
        },
        if opts.admin_listen.is_some() {
            "--admin-listen"
        } else {
            "server.admin_listen"
        },
    ];
    let mut config = match &opts.config {
        Some(path) => Config::load(path, &DemoEnv)?,
        None => shipped_config()?,
    };
    if let Some(listen) = opts.listen {
        config.server.listen = listen;
    }
    if let Some(admin) = opts.admin_listen {
        config.server.admin_listen = admin;
    }
    let stores = std::env::temp_dir().join(format!("defender-proxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&stores)?;
    let mut sandbox_opts = SandboxOptions {
        seed: opts.seed,
        ..SandboxOptions::default()
    };
    retarget(&mut config, &url, &mut sandbox_opts, &stores)?;
    let config = config.validated(&DemoEnv)?;
    let sandbox = Sandbox::start(listener, sandbox_opts).await?;
    let result = serve(
        config,
        &sandbox,
        &url,
        opts.config.as_deref(),
        settings,
        shutdown,
    )
    .await;
    sandbox.shutdown();
    let _ = std::fs::remove_dir_all(&stores);
    result
}

async fn serve(
    config: Config,
    sandbox: &Sandbox,
    url: &str,
    path: Option<&Path>,
    [listen_setting, admin_setting]: [&str; 2],
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    sign_in_device_codes(&config, sandbox).await?;
    let listeners = Listeners::bind_as(&config, listen_setting, admin_setting).await?;
    let proxy = format!("http://{}", listeners.proxy.local_addr()?);
    let admin = match &listeners.admin {
        Some(l) => format!("http://{}", l.local_addr()?),
        None => "-".to_owned(),
    };
    let source = path.map_or_else(
        || "the shipped proxy.toml".to_owned(),
        |p| p.display().to_string(),
    );
    println!("{}", banner(&proxy, &admin, url, &source, &config));
    crate::run(config, listeners, shutdown).await
}

/// Signs in every device code credential, approving in the sandbox the code it shows.
async fn sign_in_device_codes(config: &Config, sandbox: &Sandbox) -> Result<(), RunError> {
    let names: Vec<&String> = config
        .credentials
        .iter()
        .filter(|(_, c)| c.kind == CredentialType::DeviceCode)
        .map(|(name, _)| name)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let state = AppState::new(config)?;
    for name in names {
        let approve = |message: &str| {
            if let Some(code) = user_code(message) {
                sandbox.decide_device_code(code, DeviceStatus::Approved);
            }
        };
        crate::login::login(config, name, state.shared.tokens.entra(), approve)
            .await
            .map_err(|e| RunError::Setup(format!("device code sign-in of {name:?}: {e}")))?;
    }
    state.cancel.cancel();
    Ok(())
}

/// The user code in Microsoft's message: "... enter the code ABCD-1234 to authenticate."
fn user_code(message: &str) -> Option<&str> {
    let mut words = message.split_whitespace();
    words.find(|w| *w == "code")?;
    words.next()
}

fn or_default(listen: &str) -> &str {
    if listen.is_empty() {
        SANDBOX_LISTEN
    } else {
        listen
    }
}

/// `http://IP:PORT` to reach a listener at `addr` from this machine (loopback for a wildcard).
pub fn loopback_url(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

fn banner(proxy: &str, admin: &str, sandbox: &str, source: &str, config: &Config) -> String {
    let routes: String = config
        .routes
        .iter()
        .map(|r| format!("    {:<28} {}\n", r.prefix, r.name))
        .collect();
    format!(
        "defender-proxy demo: {source} against the built-in sandbox, offline\n  \
proxy    {proxy}\n  admin    {admin}  (/healthz /readyz /metrics)\n  \
sandbox  {sandbox}  (Entra ID and Defender API emulator; controls under /_sandbox/)\n  \
routes\n{routes}\n\
Try:\n  curl -s '{proxy}/api/incidents?$top=2'\n  curl -s '{proxy}/mde/api/machines?$top=2'\n  \
curl -s '{proxy}/graph/v1.0/security/alerts_v2?$top=2'\n  \
curl -s -H 'x-tenant-id: contoso' '{proxy}/api/alerts?$top=1'\n  \
curl -s -X POST '{proxy}/api/advancedhunting/run' -H 'content-type: application/json' -d '{{\"Query\":\"DeviceInfo | take 3\"}}'\n  \
curl -s '{admin}/metrics'\n\nPress Ctrl-C to stop."
    )
}

/// Runs the sandbox alone on `listen` until `shutdown`, after printing how to use it.
///
/// # Errors
///
/// When the listener does not bind.
pub async fn run_sandbox(
    listen: &str,
    seed: u64,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let listener = crate::bind_named(or_default(listen), "sandbox", "--listen").await?;
    let url = loopback_url(listener.local_addr()?);
    let opts = SandboxOptions {
        seed,
        ..SandboxOptions::default()
    };
    let sandbox = Sandbox::start(listener, opts).await?;
    println!("{}", sandbox_banner(&url, seed));
    shutdown.await;
    sandbox.shutdown();
    Ok(())
}

/// Marks the start and the end of the `proxy.toml` in [`sandbox_banner`].
pub const SNIPPET_START: &str = "# ----- proxy.toml for the sandbox -----";
/// See [`SNIPPET_START`].
pub const SNIPPET_END: &str = "# ----- end of proxy.toml -----";

fn sandbox_banner(url: &str, seed: u64) -> String {
    format!(
        "defender-proxy sandbox: Entra ID and Defender API emulator, offline\n  \
url            {url}  (authority host and API upstream)\n  \
client ID      {client}\n  client secret  {secret}\n  \
tenants        {a} (home), {b} (alias contoso)\n  \
seed           {seed}\n  \
controls       {url}/_sandbox/  (README: \"Test your scripts offline\")\n\n\
{SNIPPET_START}\n{snippet}{SNIPPET_END}\n\nPress Ctrl-C to stop.",
        client = sandbox::DEFAULT_CLIENT_ID,
        secret = sandbox::DEFAULT_CLIENT_SECRET,
        a = sandbox::TENANT_A,
        b = sandbox::TENANT_B,
        snippet = sandbox_config(url),
    )
}

/// A `proxy.toml` that points the shipped routes and limits at a sandbox at `url`.
pub fn sandbox_config(url: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"

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
name = "incidents"
prefix = "/api/incidents"
upstream = "{url}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
rate_limit = "incidents"

[[route]]
name = "hunting"
prefix = "/api/advancedhunting"
upstream = "{url}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
rate_limit = "hunting"

[[route]]
name = "mde"
prefix = "/mde/"
strip_prefix = true
upstream = "{url}"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"
rate_limit = "mde"

[[route]]
name = "mde-hunting"
prefix = "/mde/api/advancedqueries"
strip_prefix = true
upstream = "{url}/api/advancedqueries"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"
rate_limit = "mde-hunting"

[[route]]
name = "graph"
prefix = "/graph/"
strip_prefix = true
upstream = "{url}"
scope = "https://graph.microsoft.com/.default"
credential = "app"
rate_limit = "graph"

[[route]]
name = "defender"
prefix = "/"
upstream = "{url}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"

[rate_limit.incidents]
per_minute = 50
per_hour = 1500
max_wait_secs = 30

[rate_limit.hunting]
per_minute = 45
max_wait_secs = 30

[rate_limit.mde]
per_minute = 100
per_hour = 1500
max_wait_secs = 30

[rate_limit.mde-hunting]
per_minute = 45
per_hour = 1500
max_wait_secs = 30

[rate_limit.graph]
per_minute = 150
max_wait_secs = 30
"#,
        tenant_a = sandbox::TENANT_A,
        tenant_b = sandbox::TENANT_B,
        client_id = sandbox::DEFAULT_CLIENT_ID,
        secret = sandbox::DEFAULT_CLIENT_SECRET,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_snippet_is_a_valid_config() {
        let text = sandbox_config("http://127.0.0.1:8090");
        let config = Config::from_toml(&text, &|_: &str| None).expect("valid");
        assert_eq!(config.routes.len(), 6);
        let banner = sandbox_banner("http://127.0.0.1:8090", 0);
        assert!(banner.contains(&format!("{SNIPPET_START}\n{text}{SNIPPET_END}")));
    }

    #[test]
    fn the_shipped_config_runs_in_the_demo_without_any_variable() {
        let mut config = shipped_config().expect("valid");
        let mut opts = SandboxOptions::default();
        retarget(
            &mut config,
            "http://127.0.0.1:8090",
            &mut opts,
            Path::new("."),
        )
        .expect("ok");
        let config = config.validated(&DemoEnv).expect("valid");
        assert!(config.routes.iter().any(|r| r.prefix == "/graph/"));
        assert!(
            config
                .routes
                .iter()
                .all(|r| r.upstream.starts_with("http://127.0.0.1:8090"))
        );
    }

    #[test]
    fn the_user_code_is_read_from_the_message() {
        let message = "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code AB12-CD34 to authenticate.";
        assert_eq!(user_code(message), Some("AB12-CD34"));
        assert_eq!(user_code("no code"), None);
    }

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        let addr: SocketAddr = "0.0.0.0:8090".parse().expect("addr");
        assert_eq!(loopback_url(addr), "http://127.0.0.1:8090");
    }
}
