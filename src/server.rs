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
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

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
    listener: TcpListener,
    handler: Handler,
    stop: CancellationToken,
    hard: CancellationToken,
    accepted: impl Fn() + Send,
) {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    // The connections' tasks: aborted when the grace is over.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        accepted();
        let handler = handler.clone();
        let service = tower::ServiceExt::map_request(handler, move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            req
        });
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn.into_owned());
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = hard.cancelled() => connections.abort_all(),
    }
}
