use super::*;

/// The spans the answer parser finds in `head` (a whole answer head).
fn parsed(head: &'static [u8]) -> (Bytes, Vec<Span>) {
    let mut few = [(0, 0, 0, 0); crate::front::FEW_HEADERS];
    let (_, spans) = crate::h1parse::parse_response(head, &mut few, 64)
        .unwrap()
        .unwrap();
    (Bytes::from_static(head), spans.to_vec())
}

fn raw(head: &'static [u8]) -> (Box<RawHeaders>, Fields) {
    let (bytes, spans) = parsed(head);
    RawHeaders::parse_into(None, bytes, &spans)
        .unwrap()
        .unwrap()
}

fn names(r: &RawHeaders) -> Vec<String> {
    r.iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn written(r: &RawHeaders, skip: &[&str]) -> String {
    let mut out = Vec::new();
    r.write_to(&mut out, |n| {
        skip.iter().any(|s| n.eq_ignore_ascii_case(s.as_bytes()))
    });
    String::from_utf8(out).unwrap()
}

#[test]
fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
    let (r, f) = raw(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Secret-Hop\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Authenticate: Basic\r\nTE: trailers\r\nTrailer: x\r\nTransfer-Encoding: chunked\r\n\
          Upgrade: h2c\r\nProxy-Connection: close\r\nx-secret-hop: 1\r\nContent-Type: application/json\r\n\r\n",
    );
    assert_eq!(names(&r), ["Server", "Content-Type"]);
    assert_eq!(r.get(Known::ContentType), Some(&b"application/json"[..]));
    assert!(f.keep_alive && !f.close);
    assert_eq!(f.chunked, Some(true));
}

#[test]
fn content_length_is_kept_but_dropped_next_to_transfer_encoding() {
    let (r, f) = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: d\r\n\r\n");
    assert_eq!(names(&r), ["Content-Length", "Date"]);
    assert_eq!(f.length, Some(5));
    assert_eq!(r.get(Known::Date), Some(&b"d"[..]));
    let (r, f) = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\nDate: d\r\n\r\n");
    assert_eq!(names(&r), ["Date"]);
    assert_eq!(f.chunked, Some(true));
    assert_eq!(r.get(Known::ContentLength), None);
    assert_eq!(r.get(Known::Date), Some(&b"d"[..]), "positions found again");
}

#[test]
fn bad_framing_is_refused_as_the_header_map_path_refuses_it() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    ] {
        let head: &'static [u8] = head.to_vec().leak();
        let (bytes, spans) = parsed(head);
        let raw = RawHeaders::parse_into(None, bytes.clone(), &spans);
        let map = crate::front::header_fields(&bytes, &spans);
        assert!(raw.is_err(), "{}", String::from_utf8_lossy(head));
        assert_eq!(raw.err(), map.err());
    }
    let (_, f) = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(f.length, Some(5), "the same length twice is one length");
}

#[test]
fn lookups_ignore_case_and_find_the_first_value() {
    let (r, _) = raw(
        b"HTTP/1.1 200 OK\r\nRequest-Id: abc\r\nrequest-id: second\r\nCLIENT-REQUEST-ID: c\r\n\r\n",
    );
    assert_eq!(r.get(Known::RequestId), Some(&b"abc"[..]));
    assert_eq!(r.value(Known::RequestId).unwrap(), "abc");
    assert_eq!(r.get(Known::ClientRequestId), Some(&b"c"[..]));
    assert_eq!(r.get(Known::Location), None);
}

#[test]
fn too_many_fields_fall_back_to_a_header_map() {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_FIELDS {
        head.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let head: &'static [u8] = head.leak();
    let (bytes, spans) = parsed(head);
    assert!(
        RawHeaders::parse_into(None, bytes.clone(), &spans)
            .unwrap()
            .is_none()
    );
    assert!(
        RawHeaders::parse_into(None, bytes, &spans[..MAX_FIELDS])
            .unwrap()
            .is_some()
    );
}

#[test]
fn fields_are_written_as_they_came_but_for_those_skipped() {
    let (r, _) = raw(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: d\r\nConnection: keep-alive\r\nContent-Type: a/b\r\n\
          Content-Length: 3\r\nX-Last:  spaced\r\n\r\n",
    );
    assert_eq!(
        written(&r, &[]),
        "Server: up\r\nDate: d\r\nContent-Type: a/b\r\nContent-Length: 3\r\nX-Last:  spaced\r\n"
    );
    assert_eq!(
        written(&r, &["content-length", "server"]),
        "Date: d\r\nContent-Type: a/b\r\nX-Last:  spaced\r\n"
    );
}

#[test]
fn lines_ended_by_a_bare_lf_are_written_with_crlf() {
    let (r, _) = raw(b"HTTP/1.1 200 OK\nServer: up\nDate: d\r\nX: 1\n\n");
    assert_eq!(written(&r, &[]), "Server: up\r\nDate: d\r\nX: 1\r\n");
}

#[test]
fn the_map_replaces_raw_fields_of_the_same_name() {
    let mut map = HeaderMap::new();
    map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
    let (r, _) =
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nLocation: /a\r\nVary: a\r\nVary: b\r\n\r\n");
    assert_eq!(get(&map, Some(&r), Known::ContentLength), Some(&b"7"[..]));
    assert_eq!(get(&map, Some(&r), Known::Location), Some(&b"/a"[..]));
    assert_eq!(get(&map, None, Known::Location), None);
    assert!(contains(&map, Some(&r), Known::Location));
    assert!(!contains(&map, Some(&r), Known::Date));
    assert!(overridden(&map, b"CONTENT-length"));
    assert!(!overridden(&map, b"location"));
    assert_eq!(value(&map, Some(&r), Known::Location).unwrap(), "/a");

    materialize(&mut map, Some(r));
    assert_eq!(map.get_all(header::CONTENT_LENGTH).iter().count(), 1);
    assert_eq!(map[header::CONTENT_LENGTH], "7");
    assert_eq!(map[header::LOCATION], "/a");
    let vary: Vec<_> = map.get_all(header::VARY).iter().collect();
    assert_eq!(vary, ["a", "b"]);
}

#[test]
fn debug_shows_names_not_values() {
    let (r, _) = raw(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=hunter2\r\n\r\n");
    let shown = format!("{r:?}");
    assert!(shown.contains("Set-Cookie"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn visible_takes_what_header_value_to_str_takes() {
    for b in 0u8..=255 {
        let v = [b'a', b, b'z'];
        let expected = HeaderValue::from_bytes(&v).is_ok_and(|h| h.to_str().is_ok());
        assert_eq!(visible(&v).is_some(), expected, "byte {b:#04x}");
    }
    assert_eq!(
        visible(b"contoso.example:8080"),
        Some("contoso.example:8080")
    );
    assert_eq!(visible(b""), Some(""));
}

#[test]
fn names_compare_as_eq_ignore_ascii_case_does() {
    let known: &[&str] = &[
        "te",
        "date",
        "host",
        "origin",
        "expect",
        "upgrade",
        "trailer",
        "location",
        "connection",
        "keep-alive",
        "request-id",
        "content-type",
        "authorization",
        "content-length",
        "sec-fetch-site",
        "proxy-connection",
        "transfer-encoding",
        "client-request-id",
        "proxy-authenticate",
        "proxy-authorization",
        "x-defender-proxy-key",
    ];
    for lower in known {
        let lower = lower.as_bytes();
        let upper = lower.to_ascii_uppercase();
        assert!(is_name(lower, lower) && is_name(&upper, lower));
        // Every byte value at every place, in the name as written and in capitals: the same
        // answer as the standard comparison (bytes past the letters included: 0x80 and up,
        // and those one bit away from a letter or '-', such as CR for '-').
        for base in [lower.to_vec(), upper] {
            for at in 0..base.len() {
                for b in 0..=255u8 {
                    let mut name = base.clone();
                    name[at] = b;
                    assert_eq!(
                        is_name(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?} against {:?}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(lower)
                    );
                }
            }
        }
        // One byte shorter or longer is another name.
        assert!(!is_name(&lower[1..], lower));
        assert!(!is_name(&[lower, b"x"].concat(), lower));
    }
}

#[test]
fn lowercase8_changes_only_uppercase_letters() {
    for b in 0..=255u8 {
        for at in 0..8 {
            let x = u64::from(b) << (8 * at) | 0x4141_4141_4141_4141 & !(0xff << (8 * at));
            let want = u64::from_le_bytes(x.to_le_bytes().map(|c| c.to_ascii_lowercase()));
            assert_eq!(lowercase8(x), want, "byte {b:#x} at {at}");
        }
    }
}

#[test]
fn a_given_back_box_serves_the_next_answer_on_its_thread_only() {
    let (first, _) = raw(b"HTTP/1.1 200 OK\r\nDate: x\r\nServer: a\r\n\r\n");
    let at = &*first as *const RawHeaders;
    give_back(first);
    // Another thread has none of this one's.
    std::thread::spawn(|| assert!(spare().is_none()))
        .join()
        .unwrap();
    let (bytes, spans) = parsed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    let (next, _) = RawHeaders::parse_into(spare(), bytes, &spans)
        .unwrap()
        .unwrap();
    assert_eq!(
        &*next as *const RawHeaders, at,
        "the same box, filled again"
    );
    let names: Vec<_> = next.iter().map(|(n, _)| n.to_vec()).collect();
    assert_eq!(
        names,
        [b"Content-Type".to_vec()],
        "none of the first answer's fields"
    );
    assert!(spare().is_none(), "taken");
}
