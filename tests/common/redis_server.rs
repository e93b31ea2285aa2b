//! A private `redis-server` for a test: Debian's binary on a free loopback port, no
//! persistence. A missing binary fails the test (`.ci/run` installs it); it never skips.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::binary::{free_port, listening};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one with no password.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// Starts one with extra arguments (`--requirepass`, TLS settings); `{port}` in them is
    /// replaced by its port.
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let args = extra
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut server = RedisServer {
            child: None,
            port,
            args,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let tls = self.args.iter().any(|a| a == "--tls-port");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if tls {
            cmd.args(["--port", "0"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install Debian's redis-server package (.ci/run does)")
            });
        self.child = Some(child);
        assert!(listening(self.port).await, "redis-server did not start");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test CA's server certificate and key (for a TLS redis-server the proxy must refuse).
pub fn tls_args(fixtures: &Path) -> Vec<String> {
    vec![
        "--tls-port".into(),
        "{port}".into(),
        "--tls-cert-file".into(),
        fixtures.join("test-only-server.pem").display().to_string(),
        "--tls-key-file".into(),
        fixtures
            .join("test-only-server-key.pem")
            .display()
            .to_string(),
        "--tls-ca-cert-file".into(),
        fixtures.join("test-only-ca.pem").display().to_string(),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

/// Waits up to `limit` for `check` to hold, polling every 100 ms.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
