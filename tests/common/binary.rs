//! Running the real binary in tests: start it on a free port with a config file, read its
//! logs, stop it with SIGTERM, read its peak memory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_defender-proxy");

/// Writes `text` as `dir/proxy.toml`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something listens on 127.0.0.1:`port` within five seconds.
pub async fn listening(port: u16) -> bool {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A running `defender-proxy run`.
pub struct Proxy {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Proxy {
    /// Starts it with `text` (its first `listen` replaced by a free port) in `dir`.
    pub async fn start(text: &str, dir: &Path, log_level: &str) -> Proxy {
        Proxy::start_with_env(text, dir, log_level, &[]).await
    }

    /// Like `start`, with extra environment variables for the process.
    pub async fn start_with_env(
        text: &str,
        dir: &Path,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        let port = free_port();
        let text = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
        let config = write_config(dir, &text);
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", log_level)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        if listening(port).await {
            return Proxy { child, base };
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the proxy did not start");
    }

    /// SIGTERM, wait; returns the exit code and everything it printed.
    pub fn terminate(mut self) -> (i32, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (status.code().unwrap_or(-1), logs)
    }

    /// Peak resident memory so far (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap()
    }
}

/// A proxy a test did not terminate (it failed, or let it go) is killed, not left running.
impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
