//! The proxy under test as a child process: its config, start, RSS samples, and stop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use defender_sandbox::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, TENANT_A, TENANT_B};
use tokio::time::Instant;

/// How often the proxy's RSS is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The soak config: the shipped config's routes and limits, pointed at the sandbox, with a
/// partner tenant and a short upstream timeout so that a stalled upstream answers 504.
fn config_text(sandbox: &str, port: u16, admin: u16, runtime: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
runtime = "{runtime}"
request_timeout_secs = 5
shutdown_grace_secs = 10

[cloud]
authority_host = "{sandbox}"

[log]
level = "info"
access_log = true

[credentials.app]
type = "client_secret"
tenant_id = "{TENANT_A}"
client_id = "{DEFAULT_CLIENT_ID}"
client_secret = "{DEFAULT_CLIENT_SECRET}"

[credentials.app.tenants]
contoso = "{TENANT_B}"

[[route]]
name = "incidents"
prefix = "/api/incidents"
upstream = "{sandbox}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
rate_limit = "incidents"

[[route]]
name = "hunting"
prefix = "/api/advancedhunting"
upstream = "{sandbox}"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
rate_limit = "hunting"

[[route]]
name = "mde"
prefix = "/mde/"
strip_prefix = true
upstream = "{sandbox}"
scope = "https://api.securitycenter.microsoft.com/.default"
credential = "app"
rate_limit = "mde"

[[route]]
name = "defender"
prefix = "/"
upstream = "{sandbox}"
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
"#
    )
}

/// What became of the proxy.
pub struct Exit {
    /// `VmHWM` before it was stopped.
    pub peak_kib: Option<u64>,
    /// Seconds into the run when it was found dead, if it died.
    pub died_at: Option<f64>,
    /// It exited 0 after SIGTERM.
    pub exit_ok: bool,
}

/// A running `defender-proxy run`.
pub struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:ADMIN`.
    pub admin: String,
    /// Its stderr.
    pub log: PathBuf,
    died_at: Option<f64>,
}

impl Proxy {
    /// Writes the config (with `server.runtime = runtime`) to `work/proxy.toml` and starts `bin`
    /// with it; waits for `/healthz`.
    pub async fn start(
        bin: &Path,
        work: &Path,
        sandbox: &str,
        runtime: &str,
    ) -> std::io::Result<Proxy> {
        let (port, admin) = (free_port()?, free_port()?);
        let config = work.join("proxy.toml");
        std::fs::write(&config, config_text(sandbox, port, admin, runtime))?;
        let log = work.join("proxy.log");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            // The reason of every failed upstream request (debug), for the 502s in the summary.
            .env("RUST_LOG", "info,defender_proxy::forward=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut proxy = Proxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin}"),
            log,
            died_at: None,
        };
        proxy.wait_healthy().await?;
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_healthy(&mut self) -> std::io::Result<()> {
        let url = format!("{}/healthz", self.admin);
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!("the proxy exited: {status}")));
            }
            let probe = crate::http().get(&url).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(std::io::Error::other("the proxy did not become healthy"))
    }

    /// `(seconds since t0, VmRSS KiB)` every [`SAMPLE_EVERY`] until `deadline` or its death.
    pub async fn sample_rss_until(&mut self, t0: Instant, deadline: Instant) -> Vec<(f64, u64)> {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        while Instant::now() < deadline {
            tick.tick().await;
            let at = t0.elapsed().as_secs_f64();
            match (self.child.try_wait(), status_kib(self.pid(), "VmRSS")) {
                (Ok(None), Some(kib)) => samples.push((at, kib)),
                _ => {
                    self.died_at = Some(at);
                    break;
                }
            }
        }
        samples
    }

    /// SIGTERM, then up to 15 s for it to drain and exit.
    pub async fn stop(mut self) -> Exit {
        let alive = self.died_at.is_none() && matches!(self.child.try_wait(), Ok(None));
        let peak_kib = status_kib(self.pid(), "VmHWM").filter(|_| alive);
        if alive {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
        }
        let mut exit_ok = false;
        for _ in 0..150 {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    exit_ok = alive && status.success();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => break,
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        Exit {
            peak_kib,
            died_at: self.died_at,
            exit_ok,
        }
    }
}

/// A field of `/proc/PID/status` in KiB, e.g. `VmRSS`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A port that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
