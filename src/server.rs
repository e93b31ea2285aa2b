//! The client side of the wire: hyper-util's auto builder serves HTTP/1.1 and HTTP/2 with
//! prior knowledge (h2c) on each accepted connection, and its graceful shutdown drains them.
//! The proxy's own code starts at the `Service` this module is given.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::Body;

/// A request head (request line and headers) may take this many bytes...
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// ...and this many headers; more gets 431 from hyper.
pub const MAX_HEADERS: usize = 100;
/// A connection that has not sent a whole request head for this long is closed.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is on the other end of a client connection; put in each request's extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// Its address, on TCP.
    pub addr: Option<SocketAddr>,
    /// The proxy's own address of the connection, on TCP.
    pub local: Option<SocketAddr>,
    /// The user it runs as, from the socket's peer credentials on a Unix socket. (For a
    /// loopback TCP peer, see `Peer::tcp_uid`.)
    pub uid: Option<u32>,
    /// Its process, on a Unix socket.
    pub pid: Option<i32>,
}

/// Where the proxy listens.
#[derive(Debug)]
pub enum Listener {
    /// A TCP address.
    Tcp(TcpListener),
    /// A Unix domain socket (removed when dropped).
    #[cfg(unix)]
    Unix(crate::unix::Socket),
}

impl Listener {
    /// The TCP address, if it is one.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            #[cfg(unix)]
            Listener::Unix(s) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("listening on the Unix socket {}", s.path().display()),
            )),
        }
    }

    /// The address for logs: `127.0.0.1:8080` or `unix:/path`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            #[cfg(unix)]
            Listener::Unix(s) => format!("unix:{}", s.path().display()),
        }
    }
}

/// What serves each request of a connection.
pub type Handler = tower::util::BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves `listener` with `handler` until `stop`, then lets the open connections finish their
/// requests (idle keep-alive connections close at once) until `hard`, when the rest are
/// dropped. `accepted` is called for each connection.
pub async fn serve(
    listener: Listener,
    handler: Handler,
    stop: CancellationToken,
    hard: CancellationToken,
    accepted: impl Fn() + Send,
) {
    let conns = Connections {
        builder: builder(),
        graceful: GracefulShutdown::new(),
        tasks: tokio::task::JoinSet::new(),
        handler,
    };
    let conns = match listener {
        Listener::Tcp(l) => accept_tcp(l, conns, &stop, &accepted).await,
        #[cfg(unix)]
        Listener::Unix(socket) => {
            let conns = accept_unix(&socket, conns, &stop, &accepted).await;
            drop(socket);
            conns
        }
    };
    let Connections {
        graceful,
        mut tasks,
        ..
    } = conns;
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = hard.cancelled() => tasks.abort_all(),
    }
}

/// The connections being served.
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    /// Their tasks: aborted when the grace is over.
    tasks: tokio::task::JoinSet<()>,
    handler: Handler,
}

impl Connections {
    /// Serves one connection; `peer` goes into each of its requests' extensions.
    fn serve<I>(&mut self, io: I, peer: impl FnOnce() -> Peer + Send + 'static)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handler = self.handler.clone();
        let builder = self.builder.clone();
        let watcher = self.graceful.watcher();
        self.tasks.spawn(async move {
            let peer = peer();
            let service =
                tower::ServiceExt::map_request(handler, move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                });
            let conn =
                builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }

    /// Forgets the tasks that have ended.
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

async fn accept_tcp(
    listener: TcpListener,
    mut conns: Connections,
    stop: &CancellationToken,
    accepted: &(impl Fn() + Send),
) -> Connections {
    let local = listener.local_addr().ok();
    loop {
        let (stream, addr) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return conns,
        };
        let _ = stream.set_nodelay(true);
        accepted();
        conns.reap();
        conns.serve(stream, move || Peer {
            addr: Some(addr),
            local,
            uid: None,
            pid: None,
        });
    }
}

#[cfg(unix)]
async fn accept_unix(
    socket: &crate::unix::Socket,
    mut conns: Connections,
    stop: &CancellationToken,
    accepted: &(impl Fn() + Send),
) -> Connections {
    loop {
        let stream = tokio::select! {
            a = socket.listener.accept() => match a {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return conns,
        };
        accepted();
        conns.reap();
        let (uid, pid) = crate::unix::peer_cred(&stream);
        conns.serve(stream, move || Peer {
            addr: None,
            local: None,
            uid,
            pid,
        });
    }
}

/// Out of file descriptors, say: wait a little rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

impl Peer {
    /// The user owning a loopback TCP peer, from the kernel's connection table on Linux
    /// (`/proc/net/tcp`). Reading it takes milliseconds, so it is read on a blocking thread,
    /// and only where a log line needs it.
    pub async fn tcp_uid(&self) -> Option<u32> {
        let (addr, local) = (self.addr?, self.local?);
        if !addr.ip().is_loopback() {
            return None;
        }
        tokio::task::spawn_blocking(move || tcp_peer_uid(addr, local))
            .await
            .ok()
            .flatten()
    }
}

#[cfg(target_os = "linux")]
fn tcp_peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    crate::unix::tcp_peer_uid(peer, local)
}

#[cfg(not(target_os = "linux"))]
fn tcp_peer_uid(_: SocketAddr, _: SocketAddr) -> Option<u32> {
    None
}
