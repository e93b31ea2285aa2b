//! Hot reload: on SIGHUP (Unix), on request, or when `proxy.toml` or a file it names changes, the
//! config is loaded, validated and compiled, then swapped in whole. In-flight requests finish
//! on the config they started with; a bad config is refused with a logged reason and the old
//! one keeps serving; tokens of unchanged credentials are kept (their cache keys do not change).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::config::{Config, ConfigError, ProcessEnv};
use crate::runtime::Runtime;

/// How often the watched files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Where the config comes from and how reloads are asked for.
#[derive(Clone)]
pub struct ReloadSource {
    /// The config file.
    pub path: PathBuf,
    /// Notified to reload now (SIGHUP, tests).
    pub trigger: Arc<Notify>,
    /// File polling interval.
    pub poll_interval: Duration,
}

impl ReloadSource {
    /// Reloads from `path`, polling every `POLL_INTERVAL`.
    pub fn new(path: PathBuf) -> Self {
        ReloadSource {
            path,
            trigger: Arc::new(Notify::new()),
            poll_interval: POLL_INTERVAL,
        }
    }
}

/// Reload counters.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Configs swapped in.
    pub ok: AtomicU64,
    /// Configs refused.
    pub failed: AtomicU64,
}

/// Watches and reloads until `cancel`.
pub async fn watch(
    state: Arc<AppState>,
    source: ReloadSource,
    current: Config,
    cancel: CancellationToken,
) {
    let mut config = current;
    let mut seen = fingerprint(&source.path, &config);
    let mut hup = hangup_signal();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = source.trigger.notified() => {}
            _ = hup.recv() => tracing::info!("SIGHUP: reloading the config"),
            _ = tokio::time::sleep(source.poll_interval) => {
                let now = fingerprint(&source.path, &config);
                if now == seen {
                    continue;
                }
                tracing::info!(path = %source.path.display(), "a watched file changed: reloading the config");
            }
        }
        match reload(&state, &source.path, &config) {
            Ok(new) => {
                state.reloads.ok.fetch_add(1, Ordering::Relaxed);
                crate::warmup::spawn(&state);
                config = new;
            }
            Err(e) => {
                state.reloads.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "the new config was refused; the previous one keeps serving");
            }
        }
        seen = fingerprint(&source.path, &config);
    }
}

/// Loads, validates and swaps in the config at `path`.
pub fn reload(state: &AppState, path: &Path, old: &Config) -> Result<Config, ConfigError> {
    let config = Config::load(path, &ProcessEnv)?;
    let runtime = Runtime::build(&config, &state.shared.limiter)?;
    warn_about_restart_only_changes(old, &config);
    let live: Vec<u64> = runtime.credentials.iter().map(|c| c.id).collect();
    state.install(Arc::new(runtime));
    state.shared.tokens.retain_credentials(&live);
    tracing::info!(
        routes = config.routes.len(),
        credentials = config.credentials.len(),
        "config reloaded"
    );
    Ok(config)
}

fn warn_about_restart_only_changes(old: &Config, new: &Config) {
    let changed = [
        ("server.listen", old.server.listen != new.server.listen),
        (
            "server.admin_listen",
            old.server.admin_listen != new.server.admin_listen,
        ),
        (
            "tls.extra_ca_file",
            old.tls.extra_ca_file != new.tls.extra_ca_file,
        ),
        (
            "log",
            old.log.format != new.log.format || old.log.level != new.log.level,
        ),
        (
            "server.shutdown_grace_secs",
            old.server.shutdown_grace_secs != new.server.shutdown_grace_secs,
        ),
        ("server.workers", old.server.workers != new.server.workers),
        ("server.runtime", old.server.runtime != new.server.runtime),
    ];
    for (key, _) in changed.iter().filter(|(_, c)| *c) {
        tracing::warn!(
            key,
            "this setting changed but takes effect only after a restart"
        );
    }
}

/// Modification time and length of the config and every file it names.
fn fingerprint(path: &Path, config: &Config) -> Vec<Option<(SystemTime, u64)>> {
    std::iter::once(path.to_path_buf())
        .chain(config.referenced_files())
        .map(|p| {
            std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// SIGHUP as a stream; never fires where there is none. Windows has no SIGHUP: there a
/// reload comes from a file change (or `trigger`) only.
struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangup {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    Hangup(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    Hangup()
}
