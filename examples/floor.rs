//! The floor for `bench/run.sh`: the least a tokio proxy can do per request, to show what the
//! runtime and the kernel cost before any proxy logic. It is *not* a proxy to use: it answers
//! only GETs without bodies, reads only `Content-Length` answers, injects a fixed bearer and
//! checks nothing. Same shape as defender-proxy: a thread per worker, each with its own
//! single-threaded event loop and pool of upstream connections, accepting from one listener.
//!
//! ```text
//! floor LISTEN UPSTREAM WORKERS      e.g. floor 127.0.0.1:18111 127.0.0.1:18101 2
//! ```
//!
//! `FLOOR_SPIN=N` adds N rounds of pure computation (no memory, no system call) per request:
//! how the rate of a proxy of this shape falls with its user time alone (`bench/spin.sh`).

use std::cell::RefCell;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Pool = Rc<RefCell<Vec<(TcpStream, Vec<u8>)>>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, workers] = &args[..] else {
        eprintln!("usage: floor LISTEN UPSTREAM WORKERS");
        std::process::exit(64);
    };
    let upstream: &'static str = Box::leak(upstream.clone().into_boxed_str());
    let workers: usize = workers.parse().expect("WORKERS is a number");
    let listener = std::net::TcpListener::bind(listen).expect("LISTEN can be bound");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone().expect("a listener copy");
            std::thread::spawn(move || worker(listener, upstream))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn worker(listener: std::net::TcpListener, upstream: &'static str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        let pool: Pool = Rc::default();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let _ = connection(client, upstream, pool).await;
            });
        }
    });
}

async fn connection(
    mut client: TcpStream,
    upstream: &'static str,
    pool: Pool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let mut out = Vec::with_capacity(2048);
    loop {
        // The request head, rewritten for the upstream.
        let head_len = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
                    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
                    out.extend_from_slice(upstream.as_bytes());
                    out.extend_from_slice(b"\r\nauthorization: Bearer bench-token\r\n");
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("host")
                            || h.name.eq_ignore_ascii_case("connection")
                        {
                            continue;
                        }
                        out.extend_from_slice(h.name.as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(h.value);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    break n;
                }
                Ok(httparse::Status::Partial) => {
                    buf.reserve(4096);
                    if client.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            }
        };
        buf.drain(..head_len);
        spin();
        let pooled = pool.borrow_mut().pop();
        let (mut up, mut ubuf) = match pooled {
            Some(conn) => conn,
            None => {
                let s = TcpStream::connect(upstream).await?;
                s.set_nodelay(true)?;
                (s, Vec::with_capacity(8192))
            }
        };
        up.write_all(&out).await?;
        // The answer's head and Content-Length body, passed back.
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&ubuf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = 0usize;
                    out.clear();
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        }
                        if h.name.eq_ignore_ascii_case("connection") {
                            continue;
                        }
                        out.extend_from_slice(h.name.as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(h.value);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    while ubuf.len() < n + length {
                        ubuf.reserve(8192);
                        if up.read_buf(&mut ubuf).await? == 0 {
                            return Ok(());
                        }
                    }
                    out.extend_from_slice(&ubuf[n..n + length]);
                    ubuf.drain(..n + length);
                    break;
                }
                Ok(httparse::Status::Partial) => {
                    ubuf.reserve(8192);
                    if up.read_buf(&mut ubuf).await? == 0 {
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            }
        }
        pool.borrow_mut().push((up, ubuf));
        client.write_all(&out).await?;
    }
}

/// `FLOOR_SPIN` rounds of a xorshift generator, kept from being optimised away.
fn spin() {
    static ROUNDS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let rounds = *ROUNDS.get_or_init(|| {
        std::env::var("FLOOR_SPIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
}
