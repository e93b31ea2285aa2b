use super::*;

fn reader(bytes: &[u8], framing: Framing) -> Result<(Vec<u8>, BytesMut), BadBody> {
    // A reader without a live connection: only `next` is exercised.
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async { TcpStream::connect(addr).await.unwrap() });
    let mut r = Reader {
        stream: Arc::new(stream),
        buf: BytesMut::from(bytes),
        framing,
        continue_pending: false,
        failed: false,
    };
    let mut body = Vec::new();
    loop {
        match r.next()? {
            Some(Some(data)) => body.extend_from_slice(&data),
            Some(None) => return Ok((body, r.buf)),
            None => return Err(BadBody),
        }
    }
}

#[test]
fn chunked_bodies_are_decoded_and_the_next_request_is_left() {
    let (body, rest) = reader(
        b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET /",
        Framing::Chunked(Chunk::Size),
    )
    .unwrap();
    assert_eq!(body, b"Wikipedia");
    assert_eq!(&rest[..], b"GET /");
}

#[test]
fn bad_chunk_framing_is_an_error() {
    for bad in [
        &b"4\nWiki\r\n0\r\n\r\n"[..],
        b"4\r\nWikiX\r\n0\r\n\r\n",
        b"zz\r\nWiki\r\n0\r\n\r\n",
        b"\r\n",
        b"fffffffffffffffff\r\n",
    ] {
        assert!(
            reader(bad, Framing::Chunked(Chunk::Size)).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn a_length_body_stops_at_its_length() {
    let (body, rest) = reader(b"abcdGET", Framing::Length(4)).unwrap();
    assert_eq!(body, b"abcd");
    assert_eq!(&rest[..], b"GET");
}

#[test]
fn header_tokens() {
    assert!(has_token(b"keep-alive, Close", b"close"));
    assert!(!has_token(b"closed", b"close"));
    assert!(last_token_is(b"gzip, chunked", b"chunked"));
    assert!(!last_token_is(b"chunked, gzip", b"chunked"));
    assert_eq!(parse_length(b"12"), Some(12));
    assert_eq!(parse_length(b"+12"), None);
    assert_eq!(parse_length(b"1 2"), None);
    assert_eq!(parse_length(b""), None);
}

#[test]
fn lengths_and_chunk_sizes_are_formatted_in_place() {
    let mut out = b"x".to_vec();
    push_content_length(&mut out, 1024);
    assert_eq!(out, b"xcontent-length: 1024\r\n");
    let mut line = [0u8; 20];
    let n = write_hex_line(&mut line, 0x1f40);
    assert_eq!(&line[..n], b"1f40\r\n");
    let n = write_hex_line(&mut line, usize::MAX);
    assert_eq!(&line[..n], format!("{:x}\r\n", usize::MAX).as_bytes());
    for v in [0usize, 1, 9, 10, 15, 16, 255, 256, 4095, 4096, 1 << 40] {
        let n = write_hex_line(&mut line, v);
        assert_eq!(&line[..n], format!("{v:x}\r\n").as_bytes());
        let mut out = Vec::new();
        push_content_length(&mut out, v as u64);
        assert_eq!(out, format!("content-length: {v}\r\n").as_bytes());
    }
    let mut out = Vec::new();
    push_content_length(&mut out, u64::MAX);
    assert_eq!(out, format!("content-length: {}\r\n", u64::MAX).as_bytes());
}

fn fields_of(head: &str) -> Fields {
    let bytes = Bytes::copy_from_slice(head.as_bytes());
    let mut few = [(0, 0, 0, 0); FEW_HEADERS];
    let (_, spans) = crate::h1parse::parse_request(&bytes, &mut few, 16)
        .unwrap()
        .unwrap();
    header_fields(&bytes, &spans).unwrap()
}

#[test]
fn a_connection_header_saying_only_close_or_keep_alive_is_not_kept() {
    for (value, close, keep_alive) in [
        ("keep-alive", false, true),
        ("Close", true, false),
        ("keep-alive, close", true, true),
    ] {
        let f = fields_of(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: {value}\r\nX-A: 1\r\n\r\n"
        ));
        let headers = f.headers.unwrap();
        assert!(!headers.contains_key(header::CONNECTION), "{value}");
        assert_eq!((f.close, f.keep_alive), (close, keep_alive), "{value}");
        assert_eq!(headers.len(), 2, "{value}");
    }
    // One naming other headers stays, so that those are dropped when forwarding.
    let f = fields_of("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\r\n");
    assert_eq!(f.headers.unwrap()[header::CONNECTION], "close, x-hop");
    assert!(f.close);
}

/// `f`'s output, or a failure after 1,000 s (of the paused clock): a timer that never fires
/// fails the test instead of hanging it.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1000), f)
        .await
        .expect("still waiting after 1,000 s")
}

/// A request whose send waits for an answer until `at`: how long it waited, or that it gave up.
async fn kept_send(at: tokio::time::Instant) -> &'static str {
    std::future::poll_fn(|_| match crate::deadline::wait_until(at) {
        Some(true) => Poll::Ready("timed out"),
        Some(false) => Poll::Pending,
        None => Poll::Ready("not kept"),
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_connection_timer_keeps_an_upstream_deadline_past_the_heads() {
    let stop = CancellationToken::new();
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let mut waits = Waits::new(&stop, &stopping);
    let start = tokio::time::Instant::now();
    // Past the head's deadline (30 s): the timer fires there first and is moved on.
    let at = start + Duration::from_secs(45);
    assert_eq!(
        within(waits.keep(std::pin::pin!(kept_send(at)))).await,
        "timed out"
    );
    assert_eq!(tokio::time::Instant::now(), at);
    // Before the head's deadline: the timer is moved back.
    let mut waits = Waits::new(&stop, &stopping);
    let at = tokio::time::Instant::now() + Duration::from_secs(2);
    assert_eq!(
        within(waits.keep(std::pin::pin!(kept_send(at)))).await,
        "timed out"
    );
    assert_eq!(tokio::time::Instant::now(), at);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_something_else_is_not_timed_out_by_the_connection() {
    let stop = CancellationToken::new();
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let mut waits = Waits::new(&stop, &stopping);
    let start = tokio::time::Instant::now();
    // A wait of its own (a token fetch, say) longer than the head's deadline.
    let own = async {
        tokio::time::sleep(Duration::from_secs(100)).await;
        "done"
    };
    assert_eq!(within(waits.keep(std::pin::pin!(own))).await, "done");
    assert_eq!(
        tokio::time::Instant::now(),
        start + Duration::from_secs(100)
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_not_whole_in_time_ends_the_connection_after_a_request_was_kept() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let server = Arc::new(listener.accept().await.unwrap().0);
    let stop = CancellationToken::new();
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let mut waits = Waits::new(&stop, &stopping);
    // A request whose upstream deadline was kept on the connection's timer first.
    let at = tokio::time::Instant::now() + Duration::from_secs(5);
    assert_eq!(
        within(waits.keep(std::pin::pin!(kept_send(at)))).await,
        "timed out"
    );
    // Then the next head comes in part and stalls: the connection ends at the head's deadline.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut buf, mut spare) = (BytesMut::with_capacity(1024), None);
    let start = tokio::time::Instant::now();
    let read = read_head(&server, &mut buf, &mut waits, false, &mut spare);
    let r = tokio::time::timeout(Duration::from_secs(100), read).await;
    assert!(
        matches!(r, Ok(Err(HeadError::Io))),
        "the stalled head was not cut"
    );
    assert_eq!(start.elapsed(), HEAD_TIMEOUT);
}
