//! `server.workers`: each worker thread accepts from the shared listener with its own event
//! loop and upstream pool; all of them serve, are counted, and drain at shutdown.

mod common;

use std::time::Duration;

use common::{Setup, TestEnv};

fn worker_connections(metrics: &str) -> Vec<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("defender_proxy_worker_connections_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

async fn with_workers(n: usize) -> TestEnv {
    common::start(Setup {
        server: format!("workers = {n}"),
        ..Setup::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_served_and_every_worker_drains_at_shutdown() {
    for workers in [1, 3] {
        let env = with_workers(workers).await;
        let slow: Vec<_> = (0..12)
            .map(|_| {
                // A client of its own: a new connection per request.
                let http = common::client();
                let url = format!("{}/api/_test/slow?millis=1200", env.base);
                tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let counts = worker_connections(&env.metrics().await);
        assert_eq!(counts.len(), workers, "{counts:?}");
        assert_eq!(counts.iter().sum::<u64>(), 12, "{counts:?}");
        let addr = env.proxy.proxy_addr;
        env.proxy.shutdown().await.unwrap();
        for s in slow {
            assert_eq!(
                s.await.unwrap().unwrap(),
                200,
                "drained with {workers} workers"
            );
        }
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no worker accepts after shutdown ({workers} workers)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_is_one_worker_per_core() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let expected = cores.min(defender_proxy::MAX_DEFAULT_WORKERS);
    assert_eq!(defender_proxy::worker_count(0), expected);
    assert_eq!(defender_proxy::worker_count(2), 2);
    let env = with_workers(0).await;
    let counts = worker_connections(&env.metrics().await);
    assert_eq!(counts.len(), expected, "{counts:?}");
}

#[tokio::test]
async fn an_absurd_worker_count_is_a_config_error() {
    let text = common::config_text("http://127.0.0.1:1", &Setup::default())
        .replace("[server]\n", "[server]\nworkers = 100000\n");
    let err = defender_proxy::config::Config::from_toml(&text, &|_: &str| None).unwrap_err();
    assert_eq!(err.path, "server.workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connections_spread_evenly_over_the_workers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = with_workers(2).await;
    // Twenty keep-alive connections opened at once and kept: whichever worker accepts them,
    // each worker ends up serving half (give or take one).
    let mut open = Vec::new();
    for _ in 0..20 {
        open.push(tokio::net::TcpStream::connect(env.proxy.proxy_addr));
    }
    let mut streams = Vec::new();
    for connect in open {
        streams.push(connect.await.unwrap());
    }
    for s in &mut streams {
        s.write_all(b"GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let counts = worker_connections(&env.metrics().await);
    assert_eq!(counts.iter().sum::<u64>(), 20, "{counts:?}");
    assert!(counts.iter().all(|c| (9..=11).contains(c)), "{counts:?}");
}

/// A burst of new connections waits in the listen queue, however many the proxy has yet to
/// accept: with the standard library's backlog of 128, the rest of a burst of a thousand had
/// their SYNs dropped and retried a second later.
#[tokio::test]
async fn the_listen_queue_holds_a_burst_of_connections_not_yet_accepted() {
    let listener = defender_proxy::bind_listener("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing accepts: each connection completes only if the queue has room for it.
    let burst = 600;
    let connects: Vec<_> = (0..burst)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            })
        })
        .collect();
    let mut queued = Vec::new();
    for c in connects {
        if let Ok(Ok(stream)) = c.await.unwrap() {
            queued.push(stream);
        }
    }
    assert_eq!(
        queued.len(),
        burst,
        "connections left out of the listen queue"
    );
    assert!(defender_proxy::LISTEN_BACKLOG as usize >= burst);
    drop(listener);
}
