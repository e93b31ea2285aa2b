//! `server.runtime = "per-core"`: the proxy listener served by `threads` threads, each running
//! a current-thread tokio runtime that accepts connections from the one listening socket and
//! sends upstream through a connection pool of its own. A request, its upstream connection
//! and the tasks hyper spawns for them all run on the thread that accepted the client's
//! connection, so handing a response from the upstream connection to the client connection
//! wakes no other thread. Everything else is shared as with the multi-thread runtime: the
//! config, tokens, rate limits and metrics. The admin listener, reloads and the Redis watch
//! run on the multi-thread runtime.
//!
//! What a request starts in the background (a token fetch, a Redis reconnection) runs on its
//! thread's runtime and may then serve the other threads' requests too. So at shutdown each
//! thread keeps its runtime until every thread has drained its connections.
//!
//! The trade: a connection stays on the thread that accepted it, so a few busy connections
//! can leave a thread idle while another is saturated. The multi-thread runtime (the default)
//! moves work between threads instead.

use std::future::Future;
use std::io;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::server::{self, Handler};
use crate::upstream;

/// Once every thread has drained, blocking work left on a thread's runtime (a DNS lookup,
/// say) gets this long before the thread lets go of it.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Starts `threads` serving threads on `listener`, each with its own pool made like `client`.
/// They stop accepting on `stop` and drop what is left on `hard` (see `server::serve`). Fails
/// if a thread cannot start; otherwise the future returned resolves when every thread has
/// finished serving.
pub async fn serve(
    listener: TcpListener,
    threads: usize,
    handler: Handler,
    client: &upstream::Client,
    stop: &CancellationToken,
    hard: &CancellationToken,
    accepted: impl Fn() + Clone + Send + 'static,
) -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = listener.into_std()?;
    // Cancelled when the future returned ends (or is dropped): the runtimes may then go.
    let release = CancellationToken::new();
    let release_on_drop = release.clone().drop_guard();
    let (mut started, mut drained) = (Vec::new(), Vec::new());
    for i in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let client = client.another(threads);
        let handler = Handler::new(tower::ServiceExt::map_request(
            handler.clone(),
            move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(client.clone());
                req
            },
        ));
        let (stop, hard, accepted) = (stop.clone(), hard.clone(), accepted.clone());
        let release = release.clone();
        let (started_tx, started_rx) = oneshot::channel::<io::Result<()>>();
        let (drained_tx, drained_rx) = oneshot::channel::<()>();
        started.push(started_rx);
        drained.push(drained_rx);
        std::thread::Builder::new()
            .name(format!("dp-core-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    let listener = server::Listener::Tcp(listener);
                    server::serve(listener, handler, stop, hard, accepted).await;
                    let _ = drained_tx.send(());
                    release.cancelled().await;
                });
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            })?;
    }
    for one in started {
        one.await
            .unwrap_or_else(|_| Err(io::Error::other("a serving thread ended as it started")))?;
    }
    Ok(async move {
        for one in drained {
            // An error means the thread ended without saying so (it panicked): it is done too.
            let _ = one.await;
        }
        drop(release_on_drop);
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http1::SendRequest;
    use hyper_util::rt::TokioIo;

    use super::*;

    async fn get(conn: &mut SendRequest<Empty<Bytes>>, path: &str) -> (u16, String) {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A task one thread starts may be what another thread's request waits for: the thread
    /// that drains first keeps its runtime, and so the task, until the others have drained.
    #[tokio::test]
    async fn a_thread_keeps_its_runtime_until_every_thread_has_drained() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = upstream::Client::new(crate::tls::client_config(None).unwrap());
        // `/start` spawns, on the thread that serves it, a task that says "done" after a
        // while; `/wait` waits for it; anything else answers with the thread's name.
        let (done, waiter) = tokio::sync::watch::channel(false);
        let done = Arc::new(done);
        let handler = Handler::new(tower::service_fn(move |req: Request<Incoming>| {
            let (done, mut waiter) = (done.clone(), waiter.clone());
            async move {
                let status = match req.uri().path() {
                    "/start" => {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let _ = done.send(true);
                        });
                        200
                    }
                    "/wait" => match waiter.wait_for(|done| *done).await {
                        Ok(_) => 200,
                        Err(_) => 500,
                    },
                    _ => 200,
                };
                let name = std::thread::current().name().unwrap_or("?").to_string();
                let resp = http::Response::builder()
                    .status(status)
                    .body(crate::body::full(name))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, hard) = (CancellationToken::new(), CancellationToken::new());
        let served = serve(listener, 2, handler, &client, &stop, &hard, || {})
            .await
            .unwrap();
        let served = tokio::spawn(served);
        // A connection on each thread (the kernel picks which thread accepts one).
        let mut on = HashMap::new();
        for _ in 0..100 {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(driver);
            let (_, thread) = get(&mut conn, "/where").await;
            on.entry(thread).or_insert(conn);
            if on.len() == 2 {
                break;
            }
        }
        let mut first = on.remove("dp-core-0").expect("a connection on dp-core-0");
        let mut second = on.remove("dp-core-1").expect("a connection on dp-core-1");
        assert_eq!(get(&mut first, "/start").await.0, 200);
        let waiting = tokio::spawn(async move { get(&mut second, "/wait").await.0 });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // dp-core-0 has nothing in flight and drains at once; dp-core-1 waits on its task.
        stop.cancel();
        let status = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting request is answered")
            .unwrap();
        assert_eq!(status, 200);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("every thread finishes")
            .unwrap();
    }
}
