//! defender-proxy: a local authenticating reverse proxy for the Microsoft Defender APIs.
//!
//! This crate root builds the application state, serves the proxy and admin listeners, and
//! shuts them down gracefully. The request path itself is in `layers`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod check;
pub mod cloud;
pub mod config;
pub mod demo;
pub mod egress;
pub mod error;
pub mod layers;
pub mod login;
pub mod percore;
pub mod ratelimit;
pub mod reload;
pub mod rewrite;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;
#[cfg(unix)]
pub mod unix;
pub mod upstream;
pub mod warmup;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::{Config, ConfigError};
use crate::layers::Shared;
use crate::runtime::Runtime;
use crate::server::Handler;
use crate::telemetry::Metrics;
use crate::token::{EntraClient, TokenCache};

/// Most cached tokens kept at once (credential × tenant × scope).
const TOKEN_CACHE_CAPACITY: u64 = 100_000;
/// Most rate-limit buckets kept at once (limit × tenant).
const RATE_LIMIT_BUCKETS: u64 = 100_000;

/// Shared state of a running proxy.
pub struct AppState {
    /// The current compiled config.
    pub runtime: ArcSwap<Runtime>,
    /// The request path built for it (swapped with it on reload).
    stack: Arc<ArcSwap<Handler>>,
    /// What the request path shares across reloads: tokens, buckets, metrics, the client.
    pub shared: Arc<Shared>,
    /// Cancelled at shutdown; background tasks stop on it.
    pub cancel: CancellationToken,
    /// Reload counters.
    pub reloads: reload::ReloadStats,
}

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound or failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// TLS or HTTP client setup failed.
    #[error("{0}")]
    Setup(String),
}

/// The bound listeners (tests bind port 0 and read `local_addr`).
pub struct Listeners {
    /// The proxy listener.
    pub proxy: server::Listener,
    /// The admin listener, unless disabled.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config.server`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Listeners::bind_as(config, "server.listen", "server.admin_listen").await
    }

    /// Binds the addresses of `config.server`; an error names `listen_setting` or
    /// `admin_setting` (a key or a flag) as what moves the listener.
    pub async fn bind_as(
        config: &Config,
        listen_setting: &str,
        admin_setting: &str,
    ) -> std::io::Result<Listeners> {
        let s = &config.server;
        let proxy = match s.listen.strip_prefix("unix:") {
            #[cfg(unix)]
            Some(path) => server::Listener::Unix(
                unix::Socket::bind(
                    std::path::Path::new(path),
                    config::socket_mode(&s.socket_mode).unwrap_or(0o600),
                    s.socket_group.as_deref(),
                )
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open the proxy listener on {}: {e}; set {listen_setting} to another path", s.listen),
                    )
                })?,
            ),
            #[cfg(not(unix))]
            Some(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "unix: sockets are not available on this platform",
                ));
            }
            None => server::Listener::Tcp(bind_named(&s.listen, "proxy", listen_setting).await?),
        };
        let admin = match config.server.admin_listen.as_str() {
            "" => None,
            addr => Some(bind_named(addr, "admin", admin_setting).await?),
        };
        Ok(Listeners { proxy, admin })
    }
}

/// `bind_listener`, with an error that names the listener, its address and the setting
/// (`setting`, a key or a flag) that moves it.
pub async fn bind_named(addr: &str, listener: &str, setting: &str) -> std::io::Result<TcpListener> {
    bind_listener(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "another process listens there: stop it, or ",
            _ => "",
        };
        std::io::Error::new(
            e.kind(),
            format!("cannot open the {listener} listener on {addr}: {e}; {why}set {setting} to another address"),
        )
    })
}

/// Connections the kernel queues for a listener until the proxy accepts them.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Listens on `addr` (the first of its addresses that binds) with room for `LISTEN_BACKLOG`
/// connections not yet accepted. The standard library's 128 made a burst of new connections
/// (a thousand clients starting at once) wait a second for the refused ones' SYN retransmits.
pub async fn bind_listener(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = match a {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address names no host",
        )
    }))
}

impl AppState {
    /// Builds the state for `config`.
    pub fn new(config: &Config) -> Result<Arc<AppState>, RunError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = tls::client_config(config.tls.extra_ca_file.as_deref())
            .map_err(|e| ConfigError::new("tls.extra_ca_file", e))?;
        let limiter = limiter(config)?;
        let runtime = Arc::new(Runtime::build(config, &limiter)?);
        let entra = EntraClient::new(tls.clone()).map_err(|e| RunError::Setup(e.to_string()))?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            tokens: TokenCache::new(entra, TOKEN_CACHE_CAPACITY, cancel.clone()),
            limiter,
            metrics: Metrics::default(),
            client: upstream::Client::new(tls),
        });
        let stack = layers::stack(&shared, &runtime);
        Ok(Arc::new(AppState {
            runtime: ArcSwap::new(runtime),
            stack: Arc::new(ArcSwap::from_pointee(stack)),
            shared,
            cancel,
            reloads: reload::ReloadStats::default(),
        }))
    }

    /// Swaps in a new config: requests from now on take the request path built for it;
    /// those in flight finish on the one they started with.
    pub fn install(&self, runtime: Arc<Runtime>) {
        self.stack
            .store(Arc::new(layers::stack(&self.shared, &runtime)));
        self.runtime.store(runtime);
    }

    /// What serves each request: the request path of the config current when it arrives.
    pub fn handler(&self) -> Handler {
        let stack = self.stack.clone();
        Handler::new(tower::service_fn(move |req| {
            let current = Handler::clone(&stack.load());
            current.oneshot(req)
        }))
    }
}

/// Test-only: divides the rate-limit windows (a minute, an hour) by this, so tests of the
/// windows take seconds. Never set in production.
pub const TEST_TIME_SCALE_ENV: &str = "DEFENDER_PROXY_TEST_TIME_SCALE";
/// Test-only: this process reads its wall clock this many milliseconds ahead (or behind, when
/// negative), to show that the shared limits never depend on a replica's clock.
pub const TEST_CLOCK_OFFSET_ENV: &str = "DEFENDER_PROXY_TEST_CLOCK_OFFSET_MS";

/// The limiter of `config`: local, or shared through Redis.
fn limiter(config: &Config) -> Result<ratelimit::Limiter, RunError> {
    let scale = std::env::var(TEST_TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let windows = ratelimit::Windows::scaled(scale);
    let s = &config.rate_limit_store;
    let store = match s.kind {
        config::StoreType::Local => None,
        config::StoreType::Redis => {
            Some((Arc::new(ratelimit::RedisStore::new(s)?), s.replicas_hint))
        }
    };
    Ok(ratelimit::Limiter::with_store(
        RATE_LIMIT_BUCKETS,
        windows,
        store,
    ))
}

/// Logs how far this replica's clock is from the shared store's (decisions use Redis's).
async fn log_clock_skew(store: Arc<ratelimit::RedisStore>) {
    let offset_ms: i64 = std::env::var(TEST_CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    match store.clock_skew(offset_ms).await {
        Ok(skew_ms) => tracing::info!(
            skew_ms,
            "rate_limit_store: connected to Redis; its clock is the one reservations use"
        ),
        Err(ratelimit::Unavailable) => tracing::info!(
            "rate_limit_store: Redis not reachable yet; limiting locally until it is"
        ),
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for up to
/// `shutdown_grace_secs`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    serve(config, listeners, shutdown, None).await
}

/// Like `run`, and reloads the config from `reload` when asked or when its files change.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reload: Option<reload::ReloadSource>,
) -> Result<(), RunError> {
    let state = AppState::new(&config)?;
    // The background tasks below end with this future, also when it returns early.
    let _cancel_on_drop = state.cancel.clone().drop_guard();
    if let Some(store) = state.shared.limiter.store() {
        tokio::spawn(log_clock_skew(store.clone()));
        tokio::spawn(store.clone().watch(state.cancel.clone()));
    }
    warmup::spawn(&state);
    if let Some(source) = reload {
        tokio::spawn(reload::watch(
            state.clone(),
            source,
            config.clone(),
            state.cancel.clone(),
        ));
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    // `stop`: accept no more connections and drain; `hard`: the grace is over (or this future
    // was dropped), close what is left.
    let stop = CancellationToken::new();
    let hard = CancellationToken::new();
    let _close_on_drop = hard.clone().drop_guard();
    // Per-core serving threads outlive this future unless told to stop.
    let _stop_on_drop = stop.clone().drop_guard();
    let connections = state.shared.metrics.connections.clone();
    let accepted = move || {
        connections.inc();
    };
    let mut proxy = match (config.server.runtime, listeners.proxy) {
        (config::ServerRuntime::PerCore, server::Listener::Tcp(l)) => {
            let threads = worker_count(config.server.workers);
            let client = &state.shared.client;
            let served =
                percore::serve(l, threads, state.handler(), client, &stop, &hard, accepted)
                    .await
                    .map_err(|e| {
                        RunError::Setup(format!("cannot start the serving threads: {e}"))
                    })?;
            tokio::spawn(served)
        }
        (_, listener) => tokio::spawn(server::serve(
            listener,
            state.handler(),
            stop.clone(),
            hard.clone(),
            accepted,
        )),
    };
    let admin = listeners
        .admin
        .map(|l| tokio::spawn(admin::serve(state.clone(), l, stop.clone())));
    shutdown.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    stop.cancel();
    if tokio::time::timeout(grace, &mut proxy).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests did not finish within the grace period"
        );
        hard.cancel();
        let _ = proxy.await;
    }
    hard.cancel();
    state.cancel.cancel();
    if let Some(a) = admin {
        a.abort();
    }
    Ok(())
}

/// Threads of the runtime when `server.workers` is 0: one per core, at most this many.
pub const MAX_DEFAULT_WORKERS: usize = 64;

/// `server.workers`, with 0 meaning one per CPU core (at most `MAX_DEFAULT_WORKERS`; the
/// cores this process may use, so a container's CPU limit counts).
pub fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_DEFAULT_WORKERS),
        n => n,
    }
}

/// A running proxy for tests and the demo.
pub struct Handle {
    /// Proxy address.
    pub proxy_addr: SocketAddr,
    /// Admin address.
    pub admin_addr: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Handle {
    /// Starts the proxy on already bound listeners.
    pub fn spawn(config: Config, listeners: Listeners) -> std::io::Result<Handle> {
        Handle::spawn_with_reload(config, listeners, None)
    }

    /// Starts the proxy, reloading from `reload` when asked or when its files change.
    pub fn spawn_with_reload(
        config: Config,
        listeners: Listeners,
        reload: Option<reload::ReloadSource>,
    ) -> std::io::Result<Handle> {
        let proxy_addr = listeners.proxy.local_addr()?;
        let admin_addr = listeners
            .admin
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shutdown = async {
            let _ = rx.await;
        };
        let task = tokio::spawn(serve(config, listeners, shutdown, reload));
        Ok(Handle {
            proxy_addr,
            admin_addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// Starts graceful shutdown and waits for it.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .map_err(|e| RunError::Setup(e.to_string()))?
    }
}
