//! The listeners: the listen queue holds a burst of new connections, every accepted
//! connection is counted, and `server.workers` (the runtime's threads) is bounded. With
//! `server.runtime = "per-core"` the same holds.

mod common;

use common::{Setup, start};

#[tokio::test]
async fn an_absurd_worker_count_is_a_config_error() {
    let text = common::config_text("http://127.0.0.1:1", &Setup::default())
        .replace("[server]\n", "[server]\nworkers = 100000\n");
    let err = defender_proxy::config::Config::from_toml(&text, &|_: &str| None).unwrap_err();
    assert_eq!(err.path, "server.workers");
}

#[tokio::test]
async fn per_core_serves_tcp_only_and_a_misspelt_runtime_is_named() {
    let with = |lines: &str| {
        let text = common::config_text("http://127.0.0.1:1", &Setup::default())
            .replace("[server]\n", &format!("[server]\n{lines}\n"));
        defender_proxy::config::Config::from_toml(&text, &|_: &str| None)
    };
    let unix = "runtime = \"per-core\"\nlisten = \"unix:/tmp/dp-test.sock\"";
    let text = common::config_text("http://127.0.0.1:1", &Setup::default());
    let unix_text = text
        .lines()
        .filter(|l| !l.starts_with("listen ="))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("[server]\n", &format!("[server]\n{unix}\n"));
    let err = defender_proxy::config::Config::from_toml(&unix_text, &|_: &str| None).unwrap_err();
    assert_eq!(err.path, "server.runtime");
    assert!(err.message.contains("TCP listener"), "{}", err.message);
    assert_eq!(
        with("runtime = \"per_core\"").unwrap_err().path,
        "server.runtime"
    );
    assert!(with("runtime = \"per-core\"").is_ok());
    assert!(with("runtime = \"multi-thread\"").is_ok());
}

#[tokio::test]
async fn every_accepted_connection_is_counted() {
    counts_connections(Setup::default()).await;
}

#[tokio::test]
async fn every_connection_a_per_core_thread_accepts_is_counted() {
    let env = counts_connections(Setup {
        server: "runtime = \"per-core\"\nworkers = 2".into(),
        ..Setup::default()
    })
    .await;
    // This process's threads: the two serving threads are among them while the proxy runs.
    let names = common::thread_names("self");
    for t in ["dp-core-0", "dp-core-1"] {
        assert!(names.iter().any(|n| n == t), "no thread {t} in {names:?}");
    }
    env.proxy.shutdown().await.unwrap();
}

async fn counts_connections(setup: Setup) -> common::TestEnv {
    let env = start(setup).await;
    for _ in 0..3 {
        // A client of its own per request: a new connection each time.
        let resp = common::client()
            .get(format!("{}/api/incidents", env.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let metrics = env.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "defender_proxy_connections_total 3"),
        "{metrics}"
    );
    env
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
