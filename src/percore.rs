//! `server.runtime = "per-core"`: the proxy listener served by `threads` threads, each running
//! a current-thread tokio runtime that accepts connections from the one listening socket and
//! sends upstream through a connection pool of its own. A request, its upstream connection
//! and the tasks hyper spawns for them all run on the thread that accepted the client's
//! connection, so handing a response from the upstream connection to the client connection
//! wakes no other thread. Everything else is shared as with the multi-thread runtime: the
//! config, tokens, rate limits and metrics. The admin listener, reloads and the Redis watch
//! stay on the multi-thread runtime.
//!
//! The trade: a connection stays on the thread that accepted it, so a few busy connections
//! can leave a thread idle while another is saturated. The multi-thread runtime (the default)
//! moves work between threads instead.

use std::future::Future;
use std::io;

use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::{self, Handler};
use crate::upstream;

/// Starts `threads` serving threads on `listener`, each with its own pool made like `client`.
/// They stop accepting on `stop` and drop what is left on `hard` (see `server::serve`); the
/// future returned resolves when every one has finished.
pub fn serve(
    listener: TcpListener,
    threads: usize,
    handler: Handler,
    client: &upstream::Client,
    stop: &CancellationToken,
    hard: &CancellationToken,
    accepted: impl Fn() + Clone + Send + 'static,
) -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = listener.into_std()?;
    let mut finished = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let client = client.another();
        let handler = Handler::new(tower::ServiceExt::map_request(
            handler.clone(),
            move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(client.clone());
                req
            },
        ));
        let (stop, hard, accepted) = (stop.clone(), hard.clone(), accepted.clone());
        let (done, finished_one) = tokio::sync::oneshot::channel::<()>();
        finished.push(finished_one);
        std::thread::Builder::new()
            .name(format!("dp-core-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => {
                                let l = server::Listener::Tcp(l);
                                server::serve(l, handler, stop, hard, accepted).await;
                            }
                            Err(e) => tracing::error!(error = %e, "a serving thread cannot listen"),
                        }
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "a serving thread cannot start its runtime")
                    }
                }
                let _ = done.send(());
            })?;
    }
    Ok(async move {
        for one in finished {
            // An error means the thread ended without saying so (it panicked): it is done too.
            let _ = one.await;
        }
    })
}
