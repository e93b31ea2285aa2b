//! HTTP/1.x heads, read as `httparse` reads them with its default configuration (the tests
//! below hold the two to the same result for every input), in one pass that records where
//! each part and each field lies.
//!
//! Every request and every answer goes through here. `httparse` plus turning its fields into
//! positions took about 1,400 instructions for nginx's answer with five fields
//! (`bench/callgrind.sh`): it looks at a name one byte at a time, and at a value through a
//! routine picked at run time. Here names, values, the request target and the reason phrase
//! are looked at eight bytes at a time for the first byte that may not be in them, which is
//! where they end or where they are invalid.

use crate::front::{FEW_HEADERS, FewSpans, Span, Spans};

/// The status line of an answer head, and where the head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusLine {
    /// The head's length, its blank line included.
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The three-digit status code, as written.
    pub code: u16,
}

/// The request line of a request head, and where the head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLine {
    /// The head's length, its blank line included.
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Where the method is, and its length: a token.
    pub method: (usize, usize),
    /// Where the request target is, and its length: visible ASCII or obs-text, and UTF-8.
    pub target: (usize, usize),
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// It is not valid HTTP/1.x.
    Syntax,
    /// It has more fields than the caller allows.
    TooManyFields,
}

/// Parses the answer head at the start of `buf`: `Ok(None)` while it is incomplete. The
/// fields' spans go into `few` while they fit, else into a `Vec`.
pub(crate) fn parse_response<'a>(
    buf: &[u8],
    few: &'a mut FewSpans,
    max: usize,
) -> Result<Option<(StatusLine, Spans<'a>)>, Invalid> {
    let Some(line) = status_line(buf)? else {
        return Ok(None);
    };
    Ok(fields(buf, line.len, few, max)?.map(|(len, spans)| (StatusLine { len, ..line }, spans)))
}

/// Parses the request head at the start of `buf`, as [`parse_response`] an answer's.
pub(crate) fn parse_request<'a>(
    buf: &[u8],
    few: &'a mut FewSpans,
    max: usize,
) -> Result<Option<(RequestLine, Spans<'a>)>, Invalid> {
    let Some(line) = request_line(buf)? else {
        return Ok(None);
    };
    Ok(fields(buf, line.len, few, max)?.map(|(len, spans)| (RequestLine { len, ..line }, spans)))
}

/// The fields from `i` on, to the blank line: the head's length and the fields' spans.
fn fields<'a>(
    buf: &[u8],
    mut i: usize,
    few: &'a mut FewSpans,
    max: usize,
) -> Result<Option<(usize, Spans<'a>)>, Invalid> {
    let mut n = 0;
    let mut many: Option<Vec<Span>> = None;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        // A blank line ends the head.
        if b == b'\r' || b == b'\n' {
            return Ok(line_end(buf, i)?.map(|len| {
                let spans = match many {
                    Some(v) => Spans::Many(v),
                    None => Spans::Few(&few[..n]),
                };
                (len, spans)
            }));
        }
        // The name: one token character or more, then the colon (no space before it).
        let name_at = i;
        i = token_end(buf, i);
        match buf.get(i) {
            None => return Ok(None),
            Some(b':') if i > name_at => {}
            Some(_) => return Err(Invalid::Syntax),
        }
        let name_len = i - name_at;
        i += 1;
        // Spaces and tabs before the value are not part of it.
        loop {
            match buf.get(i) {
                None => return Ok(None),
                Some(b' ' | b'\t') => i += 1,
                Some(_) => break,
            }
        }
        let value_at = i;
        let end = text_end(buf, i);
        i = match line_end(buf, end)? {
            Some(next) => next,
            None => return Ok(None),
        };
        // Nor are those after it.
        let mut value_end = end;
        while value_end > value_at && matches!(buf[value_end - 1], b' ' | b'\t') {
            value_end -= 1;
        }
        if n == max {
            return Err(Invalid::TooManyFields);
        }
        let span = (name_at, name_len, value_at, value_end - value_at);
        match &mut many {
            Some(v) => v.push(span),
            None if n < FEW_HEADERS => few[n] = span,
            None => {
                let mut v = Vec::with_capacity(2 * FEW_HEADERS);
                v.extend_from_slice(&few[..]);
                v.push(span);
                many = Some(v);
            }
        }
        n += 1;
    }
}

/// Where the head proper starts: past any blank lines before it.
fn skip_blank_lines(buf: &[u8]) -> Result<Option<usize>, Invalid> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(Invalid::Syntax),
            },
            Some(_) => return Ok(Some(i)),
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1` at `i`: 0 or 1.
fn version(buf: &[u8], i: usize) -> Result<Option<u8>, Invalid> {
    match buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        Some(b"HTTP/1.1") => Ok(Some(1)),
        Some(b"HTTP/1.0") => Ok(Some(0)),
        Some(_) => Err(Invalid::Syntax),
        None => {
            // Incomplete: invalid already if what there is cannot begin a version.
            let have = buf.get(i..).unwrap_or_default();
            if have.starts_with(&b"HTTP/1."[..have.len().min(7)]) {
                Ok(None)
            } else {
                Err(Invalid::Syntax)
            }
        }
    }
}

/// The status line, its `len` where the fields start; `Ok(None)` while incomplete.
fn status_line(buf: &[u8]) -> Result<Option<StatusLine>, Invalid> {
    let Some(mut i) = skip_blank_lines(buf)? else {
        return Ok(None);
    };
    let Some(version) = version(buf, i)? else {
        return Ok(None);
    };
    i += 8;
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') => i += 1,
        Some(_) => return Err(Invalid::Syntax),
    }
    let mut code = 0u16;
    for _ in 0..3 {
        match buf.get(i) {
            None => return Ok(None),
            Some(&d @ b'0'..=b'9') => code = code * 10 + u16::from(d - b'0'),
            Some(_) => return Err(Invalid::Syntax),
        }
        i += 1;
    }
    // A reason phrase, or none.
    let end = match buf.get(i) {
        None => return Ok(None),
        Some(b' ') => text_end(buf, i + 1),
        Some(b'\r' | b'\n') => i,
        Some(_) => return Err(Invalid::Syntax),
    };
    Ok(line_end(buf, end)?.map(|len| StatusLine { len, version, code }))
}

/// The request line, its `len` where the fields start; `Ok(None)` while incomplete.
fn request_line(buf: &[u8]) -> Result<Option<RequestLine>, Invalid> {
    let Some(method_at) = skip_blank_lines(buf)? else {
        return Ok(None);
    };
    // The method: a token, then one space.
    let mut i = token_end(buf, method_at);
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') if i > method_at => {}
        Some(_) => return Err(Invalid::Syntax),
    }
    let method = (method_at, i - method_at);
    i += 1;
    // The target: one byte or more of visible ASCII or obs-text, UTF-8, then one space.
    let target_at = i;
    i = target_end(buf, i);
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') if i > target_at && utf8(&buf[target_at..i]) => {}
        Some(_) => return Err(Invalid::Syntax),
    }
    let target = (target_at, i - target_at);
    i += 1;
    let Some(version) = version(buf, i)? else {
        return Ok(None);
    };
    // And the line's end, at once.
    match buf.get(i + 8) {
        None => Ok(None),
        Some(b'\r' | b'\n') => Ok(line_end(buf, i + 8)?.map(|len| RequestLine {
            len,
            version,
            method,
            target,
        })),
        Some(_) => Err(Invalid::Syntax),
    }
}

/// Whether `bytes` are UTF-8: ASCII (the usual target) is told eight bytes at a time.
fn utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Where the line whose text ends at `end` is over (past its CRLF or LF): `Ok(None)` when the
/// buffer ends first, invalid when the byte at `end` (the first one the text may not hold)
/// is not a line end.
fn line_end(buf: &[u8], end: usize) -> Result<Option<usize>, Invalid> {
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(end + 1)),
        Some(b'\r') => match buf.get(end + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(end + 2)),
            Some(_) => Err(Invalid::Syntax),
        },
        Some(_) => Err(Invalid::Syntax),
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first byte from `i` on that a field value or a reason phrase may not hold (any
/// control character but the tab, and DEL), or the buffer's length.
fn text_end(buf: &[u8], i: usize) -> usize {
    visible_end::<0x20, true>(buf, i)
}

/// The first byte from `i` on that a request target may not hold (a space, any control
/// character, DEL), or the buffer's length.
fn target_end(buf: &[u8], i: usize) -> usize {
    visible_end::<0x21, false>(buf, i)
}

/// The first byte from `i` on below `BELOW` (but a tab when `TAB`) or DEL, or the buffer's
/// length.
fn visible_end<const BELOW: u8, const TAB: bool>(buf: &[u8], mut i: usize) -> usize {
    let below = u64::from(BELOW) * ONES;
    while let Some(word) = buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*word);
        // Per byte, the high bit: set in `low` for a byte below BELOW, in `del` for 0x7f. A
        // byte's borrow reaches only the bytes after it, so the first byte marked is exact.
        let low = w.wrapping_sub(below) & !w & HIGH;
        let d = w ^ (0x7f * ONES);
        let del = d.wrapping_sub(ONES) & !d & HIGH;
        let marked = low | del;
        if marked == 0 {
            i += 8;
            continue;
        }
        let at = i + (marked.trailing_zeros() / 8) as usize;
        if !(TAB && buf[at] == b'\t') {
            return at;
        }
        i = at + 1;
    }
    while buf
        .get(i)
        .is_some_and(|&b| (TAB && b == b'\t') || (b >= BELOW && b != 0x7f))
    {
        i += 1;
    }
    i
}

/// The first byte from `i` on that a token (a field name, a method) may not hold, or the
/// buffer's length. Tokens are mostly letters, digits and dashes: eight of those at a time
/// are let through at once, and any other byte is looked up.
fn token_end(buf: &[u8], mut i: usize) -> usize {
    while let Some(word) = buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*word);
        // Per byte, the high bit set when the byte is a letter, a digit or a dash; exact for
        // every byte below 0x80 (no sum below carries into the next byte), and bytes from
        // 0x80 on are looked up.
        let low = w & !HIGH;
        let lower = low | (0x20 * ONES);
        let letter = lower.wrapping_add(0x1f * ONES) & !lower.wrapping_add(0x05 * ONES);
        let digit = low.wrapping_add(0x50 * ONES) & !low.wrapping_add(0x46 * ONES);
        let d = low ^ (b'-' as u64 * ONES);
        let dash = !((d.wrapping_add(0x7f * ONES)) | d);
        let other = !(letter | digit | dash) & HIGH | (w & HIGH);
        if other == 0 {
            i += 8;
            continue;
        }
        let at = i + (other.trailing_zeros() / 8) as usize;
        if !TOKEN[usize::from(buf[at])] {
            return at;
        }
        i = at + 1;
    }
    while buf.get(i).is_some_and(|&c| TOKEN[usize::from(c)]) {
        i += 1;
    }
    i
}

/// RFC 9110's `tchar`: the bytes a token is made of.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#' | b'$' | b'%' | b'&')
            || matches!(
                c,
                b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a parser made of a head: its first line (summed up as text) and each field's
    /// name, value and place, or `None` while incomplete, or why it is invalid.
    type Outcome = Result<Option<(String, Vec<(Vec<u8>, Vec<u8>, usize)>)>, Invalid>;

    fn fields_of(buf: &[u8], spans: &[Span]) -> Vec<(Vec<u8>, Vec<u8>, usize)> {
        spans
            .iter()
            .map(|&(n, nl, v, vl)| (buf[n..n + nl].to_vec(), buf[v..v + vl].to_vec(), n))
            .collect()
    }

    fn ours(buf: &[u8], max: usize, request: bool) -> Outcome {
        let mut few = [(0, 0, 0, 0); FEW_HEADERS];
        if request {
            let parsed = parse_request(buf, &mut few, max)?;
            Ok(parsed.map(|(line, spans)| {
                let (m, t) = (line.method, line.target);
                let first = format!(
                    "{} {} {:?} {:?}",
                    line.len,
                    line.version,
                    String::from_utf8_lossy(&buf[m.0..m.0 + m.1]),
                    String::from_utf8_lossy(&buf[t.0..t.0 + t.1]),
                );
                (first, fields_of(buf, &spans))
            }))
        } else {
            let parsed = parse_response(buf, &mut few, max)?;
            Ok(parsed.map(|(line, spans)| {
                let first = format!("{} {} {}", line.len, line.version, line.code);
                (first, fields_of(buf, &spans))
            }))
        }
    }

    fn httparse(buf: &[u8], max: usize, request: bool) -> Outcome {
        let mut slots = vec![httparse::EMPTY_HEADER; max];
        let invalid = |e| match e {
            httparse::Error::TooManyHeaders => Invalid::TooManyFields,
            _ => Invalid::Syntax,
        };
        let base = buf.as_ptr() as usize;
        let fields = |headers: &[httparse::Header<'_>]| {
            headers
                .iter()
                .map(|h| {
                    let at = h.name.as_ptr() as usize - base;
                    (h.name.as_bytes().to_vec(), h.value.to_vec(), at)
                })
                .collect()
        };
        if request {
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(buf).map_err(invalid)? {
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(len) => {
                    let first = format!(
                        "{len} {} {:?} {:?}",
                        req.version.unwrap(),
                        req.method.unwrap(),
                        req.path.unwrap()
                    );
                    Ok(Some((first, fields(req.headers))))
                }
            }
        } else {
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(buf).map_err(invalid)? {
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(len) => {
                    let first = format!("{len} {} {}", resp.version.unwrap(), resp.code.unwrap());
                    Ok(Some((first, fields(resp.headers))))
                }
            }
        }
    }

    /// Both parsers on the whole head and on every prefix of it.
    fn same(buf: &[u8], max: usize, request: bool) {
        for end in 0..=buf.len() {
            let part = &buf[..end];
            assert_eq!(
                ours(part, max, request),
                httparse(part, max, request),
                "request {request}, max {max}, input {:?}",
                String::from_utf8_lossy(part)
            );
        }
    }

    #[test]
    fn nginx_answer() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 10:13:12 GMT\r\n\
            Content-Type: application/json\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n\r\n{\"value\":[]}";
        let mut few = [(0, 0, 0, 0); FEW_HEADERS];
        let Ok(Some((line, spans))) = parse_response(head, &mut few, 128) else {
            panic!("not parsed");
        };
        assert_eq!(line.len, head.len() - 12);
        assert_eq!((line.version, line.code), (1, 200));
        let fields = fields_of(head, &spans);
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[1].0, b"Date");
        assert_eq!(fields[1].1, b"Mon, 30 Nov 2026 10:13:12 GMT");
        same(head, 128, false);
    }

    #[test]
    fn a_clients_request() {
        let head = b"GET /api/incidents?$top=10 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
            User-Agent: python-requests/2.31.0\r\nAccept: */*\r\nx-tenant-id: contoso\r\n\r\n";
        let mut few = [(0, 0, 0, 0); FEW_HEADERS];
        let Ok(Some((line, spans))) = parse_request(head, &mut few, 100) else {
            panic!("not parsed");
        };
        assert_eq!((line.len, line.version), (head.len(), 1));
        assert_eq!(line.method, (0, 3));
        assert_eq!(
            &head[line.target.0..][..line.target.1],
            b"/api/incidents?$top=10"
        );
        assert_eq!(fields_of(head, &spans)[3].1, b"contoso");
        same(head, 100, true);
    }

    #[test]
    fn edge_cases_match_httparse() {
        let answers: &[&[u8]] = &[
            b"HTTP/1.0 404\r\n\r\n",
            b"HTTP/1.1 200\n\n",
            b"\r\n\nHTTP/1.1 204 No Content\r\n\r\n",
            b"\rHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 \xffOK\tfine\r\n\r\n",
            b"HTTP/1.1 200 O\x01K\r\n\r\n",
            b"HTTP/1.1 200 OK\r\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"http/1.1 200 OK\r\n\r\n",
        ];
        let requests: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\nPOST /a HTTP/1.0\n\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET /  HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTP/1.1\r\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET /\tx HTTP/1.1\r\n\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET /caf\xc3 HTTP/1.1\r\n\r\n",
            b"GET /caf\xff\xfe HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"GET http://evil.example/x HTTP/1.1\r\n\r\n",
            b"GET /%2e%2e/../x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\x00\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET\r\n\r\n",
        ];
        let fields: &[&[u8]] = &[
            b"A:\r\nB: \t \r\nC:x \t\r\n\r\n",
            b"A: a\tb\r\n\r\n",
            b"A : b\r\n\r\n",
            b" A: b\r\n\r\n",
            b": b\r\n\r\n",
            b"A: b\r\n folded\r\n\r\n",
            b"A: b\rc\r\n\r\n",
            b"A: b\x7fc\r\n\r\n",
            b"A: b\x00c\r\n\r\n",
            b"A: caf\xc3\xa9 \xff\r\n\r\n",
            b"A\xc3: b\r\n\r\n",
            b"A: b\r\n\r",
            b"A: b\r\n\rx",
            b"A_b.c~d: 0123456789abcdef0123456789\t\t0123456789\r\n\r\n",
        ];
        for max in [0, 1, 2, 128] {
            for case in answers {
                same(case, max, false);
            }
            for case in requests {
                same(case, max, true);
            }
            for case in fields {
                same(&[&b"HTTP/1.1 200 OK\r\n"[..], case].concat(), max, false);
                same(&[&b"GET / HTTP/1.1\r\n"[..], case].concat(), max, true);
            }
        }
    }

    #[test]
    fn many_fields_leave_the_stack() {
        for (start, request) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], false),
            (b"GET / HTTP/1.1\r\n", true),
        ] {
            let mut head = start.to_vec();
            for i in 0..(FEW_HEADERS + 5) {
                head.extend_from_slice(format!("x-field-{i}: value {i}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            same(&head, 128, request);
            same(&head, FEW_HEADERS + 4, request);
            let Ok(Some((_, fields))) = ours(&head, 128, request) else {
                panic!("not parsed");
            };
            assert_eq!(fields.len(), FEW_HEADERS + 5);
            assert_eq!(
                ours(&head, FEW_HEADERS + 4, request),
                Err(Invalid::TooManyFields)
            );
        }
    }

    /// Bytes a head is made of, the ones that matter to the grammar weighted up.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => prop::sample::select(vec![
                &b"\r\n"[..], b"\n", b"\r", b": ", b":", b" ", b"\t", b"HTTP/1.1", b"HTTP/1.0 ",
                b"200", b" OK", b"Content-Length", b"Date", b"x-a", b"value", b"\r\n\r\n", b"/",
                b"?a=b", b"%2e", b"GET ",
            ]).prop_map(<[u8]>::to_vec),
            4 => prop::collection::vec(b'a'..=b'z', 1..12),
            2 => prop::collection::vec(any::<u8>(), 1..4),
            1 => prop::collection::vec(
                prop::sample::select(vec![0u8, 1, 9, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xc3, 0xa9, 0xff, b'(', b'"']),
                1..10,
            ),
        ]
    }

    /// A head built from a plausible start and random pieces.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec![
                &b"HTTP/1.1 200 OK\r\n"[..],
                b"HTTP/1.0 302 Found\n",
                b"HTTP/1.1 204\r\n",
                b"\r\nHTTP/1.1 500 \r\n",
                b"GET /api/incidents HTTP/1.1\r\n",
                b"POST /x?y HTTP/1.0\n",
                b"PATCH ",
                b"GET /a",
                b"",
            ]),
            prop::collection::vec(piece(), 0..24),
        )
            .prop_map(|(start, pieces)| {
                let mut h = start.to_vec();
                for p in pieces {
                    h.extend_from_slice(&p);
                }
                h
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn same_as_httparse(h in head(), max in prop::sample::select(vec![0usize, 1, 3, 128])) {
            for request in [false, true] {
                same(&h, max, request);
                // And the same head closed, which reaches the end more often.
                let mut closed = h.clone();
                closed.extend_from_slice(b"\r\n\r\n");
                same(&closed, max, request);
            }
        }

        #[test]
        fn token_end_is_the_first_byte_not_allowed(bytes in prop::collection::vec(
            prop_oneof![4 => prop::sample::select(b"abzAZ09-_.:~ @[`{\x7f\x80\xff\x00/".to_vec()), 1 => any::<u8>()],
            0..40,
        ), from in 0usize..40) {
            let from = from.min(bytes.len());
            let slow = bytes[from..]
                .iter()
                .position(|&b| !TOKEN[usize::from(b)])
                .map_or(bytes.len(), |p| from + p);
            prop_assert_eq!(token_end(&bytes, from), slow);
        }

        #[test]
        fn text_and_target_ends_are_the_first_byte_not_allowed(bytes in prop::collection::vec(any::<u8>(), 0..40), from in 0usize..40) {
            let from = from.min(bytes.len());
            let first = |allowed: &dyn Fn(u8) -> bool| bytes[from..]
                .iter()
                .position(|&b| !allowed(b))
                .map_or(bytes.len(), |p| from + p);
            prop_assert_eq!(text_end(&bytes, from), first(&|b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
            prop_assert_eq!(target_end(&bytes, from), first(&|b| b > 0x20 && b != 0x7f));
        }
    }
}
