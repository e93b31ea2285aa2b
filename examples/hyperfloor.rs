//! The floor for `bench/run.sh`: the least a proxy on the same libraries as defender-proxy
//! (hyper-util's auto server and legacy client, on one multi-threaded tokio runtime) does per
//! request, with no policy at all. It shows what the stack costs before the proxy's layers.
//! It is *not* a proxy to use: it checks nothing, injects a fixed bearer and Host, and answers
//! 502 when the upstream cannot be reached.
//!
//! ```text
//! hyperfloor LISTEN UPSTREAM WORKERS [per-core]   e.g. hyperfloor 127.0.0.1:18111 127.0.0.1:18101 2
//! ```
//!
//! With `per-core`, like defender-proxy's `server.runtime = "per-core"`: WORKERS threads, each
//! a current-thread runtime accepting from the listener, with a client pool of its own.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, workers, per_core) = match &args[..] {
        [_, l, u, w] => (l, u, w, false),
        [_, l, u, w, mode] if mode == "per-core" => (l, u, w, true),
        _ => {
            eprintln!("usage: hyperfloor LISTEN UPSTREAM WORKERS [per-core]");
            std::process::exit(64);
        }
    };
    let upstream: &'static str = Box::leak(upstream.clone().into_boxed_str());
    let workers: usize = workers.parse().expect("WORKERS is a number");
    let listener = std::net::TcpListener::bind(listen).expect("LISTEN can be bound");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    if per_core {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                let listener = listener.try_clone().expect("a listener for each thread");
                std::thread::spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime")
                        .block_on(serve(listener, upstream))
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(serve(listener, upstream));
}

async fn serve(listener: std::net::TcpListener, upstream: &'static str) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(connector);
    let host = HeaderValue::from_static(upstream);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, host) = (client.clone(), host.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let (client, host) = (client.clone(), host.clone());
                async move {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri = format!("http://{upstream}{path}").parse().expect("a URI");
                    *req.uri_mut() = uri;
                    let headers = req.headers_mut();
                    headers.insert(HOST, host);
                    headers.insert(
                        AUTHORIZATION,
                        HeaderValue::from_static("Bearer bench-token"),
                    );
                    let resp = match client.request(req.map(BodyExt::boxed_unsync)).await {
                        Ok(resp) => resp.map(BodyExt::boxed_unsync),
                        Err(_) => {
                            let mut resp = hyper::Response::new(
                                Empty::new().map_err(|e| match e {}).boxed_unsync(),
                            );
                            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            resp
                        }
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
