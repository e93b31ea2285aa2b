//! defender-proxy: a local authenticating reverse proxy for the Microsoft Defender APIs.
//!
//! This crate root builds the application state, serves the proxy and admin listeners, and
//! shuts them down gracefully. The request path itself is in `proxy`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod check;
pub mod cloud;
pub mod config;
mod deadline;
pub mod demo;
pub mod egress;
pub mod error;
pub mod exchange;
pub mod forward;
pub mod front;
mod h1parse;
pub mod login;
pub mod proxy;
pub mod ratelimit;
pub mod rawhead;
pub mod reload;
pub mod rewrite;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::runtime::Runtime;
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
    /// Cached tokens, shared across reloads.
    pub tokens: TokenCache,
    /// TLS settings of the upstream clients (one client per worker).
    pub upstream_tls: rustls::ClientConfig,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Cancelled at shutdown; background tasks stop on it.
    pub cancel: CancellationToken,
    /// Reload counters.
    pub reloads: reload::ReloadStats,
    /// Rate-limit buckets, shared across reloads.
    pub limiter: ratelimit::Limiter,
    /// Set when the proxy starts to drain: a kept-alive connection then closes after the
    /// answer it is writing. A plain flag, read on every request (the stop token's own check
    /// takes its lock).
    pub stopping: std::sync::atomic::AtomicBool,
}

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound or failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS or HTTP client setup failed.
    #[error("{0}")]
    Setup(String),
}

/// The bound listeners (tests bind port 0 and read `local_addr`).
pub struct Listeners {
    /// The proxy listener.
    pub proxy: TcpListener,
    /// The admin listener, unless disabled.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config.server`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let proxy = bind_listener(&config.server.listen).await?;
        let admin = match config.server.admin_listen.as_str() {
            "" => None,
            addr => Some(bind_listener(addr).await?),
        };
        Ok(Listeners { proxy, admin })
    }
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
        let workers = worker_count(config.server.workers);
        let metrics = Metrics::with_workers(workers);
        let limiter = ratelimit::Limiter::new(RATE_LIMIT_BUCKETS);
        let runtime = Runtime::build(config, &metrics, &limiter)?;
        let entra = EntraClient::new(tls.clone()).map_err(|e| RunError::Setup(e.to_string()))?;
        let cancel = CancellationToken::new();
        Ok(Arc::new(AppState {
            runtime: ArcSwap::from_pointee(runtime),
            tokens: TokenCache::new(entra, TOKEN_CACHE_CAPACITY, workers, cancel.clone()),
            upstream_tls: tls,
            metrics,
            cancel,
            reloads: reload::ReloadStats::default(),
            limiter,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }))
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
    let workers = worker_count(config.server.workers);
    let listener = listeners.proxy.into_std()?;
    let (balance, mut inboxes) = Balance::new(workers);
    let mut others = Vec::with_capacity(workers - 1);
    for (i, inbox) in inboxes.drain(1..).enumerate() {
        others.push(spawn_worker(
            i + 1,
            state.clone(),
            listener.try_clone()?,
            Intake {
                inbox,
                balance: balance.clone(),
            },
            stop.clone(),
            hard.clone(),
        )?);
    }
    let intake = Intake {
        inbox: inboxes
            .pop()
            .ok_or_else(|| RunError::Setup("no worker".into()))?,
        balance,
    };
    // Worker 0 runs on the caller's event loop when that is single-threaded (the binary's
    // is); on a multi-threaded one (a test's, a library user's) it gets a thread of its own
    // like the others, since a worker's tasks and its upstream pool stay on one thread.
    let proxy = if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        let first = Arc::new(Worker::new(state.clone(), 0));
        let serve = serve_proxy(
            first,
            TcpListener::from_std(listener)?,
            intake,
            stop.clone(),
            hard.clone(),
        );
        tokio::spawn(serve)
    } else {
        let done = spawn_worker(
            0,
            state.clone(),
            listener,
            intake,
            stop.clone(),
            hard.clone(),
        )?;
        tokio::spawn(async move {
            let _ = done.await;
        })
    };
    let admin = listeners
        .admin
        .map(|l| tokio::spawn(admin::serve(state.clone(), l, stop.clone())));
    shutdown.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    state
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    stop.cancel();
    let drained = tokio::time::timeout(grace, async {
        let _ = proxy.await;
        for done in others {
            let _ = done.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests did not finish within the grace period"
        );
    }
    hard.cancel();
    state.cancel.cancel();
    if let Some(a) = admin {
        a.abort();
    }
    Ok(())
}

/// Workers when `server.workers` is 0: one per core, at most this many.
pub const MAX_DEFAULT_WORKERS: usize = 64;

/// `server.workers`, with 0 meaning one per CPU core (at most `MAX_DEFAULT_WORKERS`; the
/// cores this process may use, so a container's CPU limit counts).
///
/// One per core, as nginx's `worker_processes auto`. Sessions 7 to 9 measured three per core
/// as faster, but those benchmarks started the proxy in the load generator's session, and with
/// the kernel's autogroup scheduling a session's threads share one share of the CPUs: more
/// threads took more of it from wrk. In a session of its own, as a service, a pod's container
/// or nginx's daemon, two workers on two cores served 19–37 % more than six, and slept as
/// seldom as nginx's workers (BENCHMARKS.md, session 10). An idle worker costs a thread.
pub fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_DEFAULT_WORKERS),
        n => n,
    }
}

/// What a worker serves requests with: the shared state and its own pool of upstream
/// connections, so that a request and its upstream connection stay on one thread.
pub struct Worker {
    /// Shared state.
    pub state: Arc<AppState>,
    /// This worker's upstream client.
    pub client: forward::HttpClient,
    /// Its number, from 0.
    pub index: usize,
    /// This worker's handle on the current config (see `runtime`).
    runtime: std::sync::Mutex<Arc<WorkerRuntime>>,
}

/// A worker's own reference to a config: an HTTP/2 request holds one of these, so that taking
/// and dropping it counts in memory only this worker writes. (Every request cloning the shared
/// `Arc<Runtime>` made both cores write its count, which cost more than the rest of the
/// lookup.) An HTTP/1 connection keeps a reference of its own instead (`front::serve`).
pub struct WorkerRuntime(Arc<Runtime>);

impl std::ops::Deref for WorkerRuntime {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.0
    }
}

impl Worker {
    fn new(state: Arc<AppState>, index: usize) -> Worker {
        let client = upstream::Upstream::new(state.upstream_tls.clone());
        let runtime = std::sync::Mutex::new(Arc::new(WorkerRuntime(state.runtime.load_full())));
        Worker {
            state,
            client,
            index,
            runtime,
        }
    }

    /// The current config, as this worker's own reference (renewed after a reload).
    pub fn runtime(&self) -> Arc<WorkerRuntime> {
        let current = self.state.runtime.load();
        let mut mine = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&mine.0, &current) {
            *mine = Arc::new(WorkerRuntime(arc_swap::Guard::into_inner(current)));
        }
        mine.clone()
    }
}

/// Starts worker `i` on its own thread with a single-threaded event loop, accepting from its
/// copy of the listener; the receiver completes when the worker has drained.
fn spawn_worker(
    i: usize,
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    intake: Intake,
    stop: CancellationToken,
    hard: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("worker-{i}"))
        .spawn(move || {
            // Log lines (the access log) are written out when the worker goes idle, or
            // together once many gather under load.
            telemetry::buffer_logs();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(telemetry::flush_logs)
                .build();
            match rt {
                Ok(rt) => rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let worker = Arc::new(Worker::new(state, i));
                            serve_proxy(worker, l, intake, stop, hard).await
                        }
                        Err(e) => tracing::error!(worker = i, error = %e, "worker cannot listen"),
                    }
                }),
                Err(e) => tracing::error!(worker = i, error = %e, "worker cannot start"),
            }
            telemetry::flush_logs();
            let _ = done.send(());
        })?;
    Ok(finished)
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

/// The client connections each worker serves, and each worker's inbox of connections that
/// another worker accepted and handed over. Whichever worker wakes first accepts a
/// connection; it keeps it unless another worker serves fewer, so that long-lived
/// connections (a script's keep-alive pool, a load generator) spread evenly over the cores.
#[derive(Clone)]
struct Balance {
    live: Arc<[std::sync::atomic::AtomicUsize]>,
    inboxes: Arc<[tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>]>,
}

type Inbox = tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>;

/// What a worker takes connections from besides the listener.
struct Intake {
    inbox: Inbox,
    balance: Balance,
}

impl Balance {
    fn new(workers: usize) -> (Balance, Vec<Inbox>) {
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let live = (0..workers)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect();
        (
            Balance {
                live,
                inboxes: senders.into(),
            },
            inboxes,
        )
    }

    /// The worker that should serve a connection `me` accepted, counted as its own from now.
    fn assign(&self, me: usize) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let mut best = me;
        for (i, l) in self.live.iter().enumerate() {
            if l.load(Relaxed) < self.live[best].load(Relaxed) {
                best = i;
            }
        }
        self.live[best].fetch_add(1, Relaxed);
        best
    }

    fn ended(&self, worker: usize) {
        self.live[worker].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn serve_proxy(
    worker: Arc<Worker>,
    listener: TcpListener,
    mut intake: Intake,
    stop: CancellationToken,
    hard: CancellationToken,
) {
    // The worker's connections; dropping the set (when the grace is over) aborts those left,
    // so a connection's task waits on no shared signal while it serves.
    let mut connections = tokio::task::JoinSet::new();
    let me = worker.index;
    let serve = |connections: &mut tokio::task::JoinSet<()>, stream: tokio::net::TcpStream| {
        let _ = stream.set_nodelay(true);
        worker.state.metrics.count_connection(me);
        let ended = Ended(intake.balance.clone(), me);
        let (worker, stop) = (worker.clone(), stop.clone());
        connections.spawn(async move {
            front::serve(worker, stream, stop).await;
            drop(ended);
        });
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let to = intake.balance.assign(me);
                    if to == me {
                        stream
                    } else {
                        // Handed over; if that worker is gone, served here after all.
                        let Ok(std) = stream.into_std() else {
                            intake.balance.ended(to);
                            continue;
                        };
                        match intake.balance.inboxes[to].send(std) {
                            Ok(()) => continue,
                            Err(back) => {
                                intake.balance.ended(to);
                                intake.balance.live[me].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                match tokio::net::TcpStream::from_std(back.0) {
                                    Ok(s) => s,
                                    Err(_) => {
                                        intake.balance.ended(me);
                                        continue;
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(handed) = intake.inbox.recv() => match tokio::net::TcpStream::from_std(handed) {
                Ok(s) => s,
                Err(_) => {
                    intake.balance.ended(me);
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stop.cancelled() => break,
        };
        serve(&mut connections, stream);
    }
    drop(listener);
    // Connections handed over just before the stop are served (and drained) too.
    intake.inbox.close();
    while let Ok(handed) = intake.inbox.try_recv() {
        match tokio::net::TcpStream::from_std(handed) {
            Ok(s) => serve(&mut connections, s),
            Err(_) => intake.balance.ended(me),
        }
    }
    tokio::select! {
        _ = async { while connections.join_next().await.is_some() {} } => {}
        _ = hard.cancelled() => connections.abort_all(),
    }
}

/// Counts a connection as ended on its worker when dropped: when served through, or aborted.
struct Ended(Balance, usize);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended(self.1);
    }
}

/// Runs the request path, turning a panic into a 500 instead of a dropped connection; the
/// response, and the request ID for it (see `proxy::handle`).
pub(crate) async fn catch_panic(
    worker: &Worker,
    rt: &Runtime,
    req: Box<http::Request<body::ClientBody>>,
    raw: Option<&rawhead::RawHeaders>,
) -> (http::Response<body::ResponseBody>, Option<proxy::RequestId>) {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(proxy::handle(worker, rt, req, raw))
        .catch_unwind()
        .await
    {
        Ok((resp, id)) => (resp, Some(id)),
        Err(_) => {
            tracing::error!("request handler panicked");
            (error::ProxyError::Internal.into_response("-"), None)
        }
    }
}
