//! The upstream's answer head, read as `httparse` reads it with its default configuration
//! (the tests below hold the two to the same answer for every input), in one pass that
//! records where each field lies.
//!
//! Every answer goes through here, and `httparse` plus turning its fields into positions took
//! about 1,400 instructions for nginx's five fields (`bench/callgrind.sh`): it looks at a name
//! one byte at a time through a runtime-dispatched routine, then at the value. Here a value
//! (and the reason phrase) is looked at eight bytes at a time for the first byte that may not
//! be in it, which is where it ends or where it is invalid.

use crate::front::{FEW_HEADERS, FewSpans, Span, Spans};

/// The status line of an answer head and where the head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatusLine {
    /// The head's length, its blank line included.
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The three-digit status code, as written.
    pub code: u16,
}

/// The head is not valid HTTP/1.x (or has more than `max` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Invalid;

/// Parses the answer head at the start of `buf`: `Ok(None)` while it is incomplete. The
/// fields' spans go into `few` while they fit, else into a `Vec`.
pub(super) fn parse<'a>(
    buf: &[u8],
    few: &'a mut FewSpans,
    max: usize,
) -> Result<Option<(StatusLine, Spans<'a>)>, Invalid> {
    let Some((mut i, version, code)) = status_line(buf)? else {
        return Ok(None);
    };
    let mut n = 0;
    let mut many: Option<Vec<Span>> = None;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        // A blank line ends the head.
        if b == b'\r' {
            return match buf.get(i + 1) {
                None => Ok(None),
                Some(b'\n') => {
                    let line = StatusLine {
                        len: i + 2,
                        version,
                        code,
                    };
                    Ok(Some((line, spans(few, n, many))))
                }
                Some(_) => Err(Invalid),
            };
        }
        if b == b'\n' {
            let line = StatusLine {
                len: i + 1,
                version,
                code,
            };
            return Ok(Some((line, spans(few, n, many))));
        }
        // The name: one token character or more, then the colon (no space before it).
        let name_at = i;
        i = name_end(buf, i);
        match buf.get(i) {
            None => return Ok(None),
            Some(b':') if i > name_at => {}
            Some(_) => return Err(Invalid),
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
            return Err(Invalid);
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

fn spans(few: &mut FewSpans, n: usize, many: Option<Vec<Span>>) -> Spans<'_> {
    match many {
        Some(v) => Spans::Many(v),
        None => Spans::Few(&few[..n]),
    }
}

/// The status line (after any blank lines before it): where the fields start, the version and
/// the code; `Ok(None)` while incomplete.
fn status_line(buf: &[u8]) -> Result<Option<(usize, u8, u16)>, Invalid> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(Invalid),
            },
            Some(_) => break,
        }
    }
    let version = match buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        Some(b"HTTP/1.1") => 1,
        Some(b"HTTP/1.0") => 0,
        Some(_) => return Err(Invalid),
        None => {
            // Incomplete: invalid already if what there is cannot begin a version.
            let have = &buf[i..];
            let want = &b"HTTP/1."[..have.len().min(7)];
            return if have.starts_with(want) {
                Ok(None)
            } else {
                Err(Invalid)
            };
        }
    };
    i += 8;
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') => i += 1,
        Some(_) => return Err(Invalid),
    }
    let mut code = 0u16;
    for _ in 0..3 {
        match buf.get(i) {
            None => return Ok(None),
            Some(&d @ b'0'..=b'9') => code = code * 10 + u16::from(d - b'0'),
            Some(_) => return Err(Invalid),
        }
        i += 1;
    }
    match buf.get(i) {
        None => Ok(None),
        // A reason phrase, or none.
        Some(b' ') => {
            let end = text_end(buf, i + 1);
            Ok(line_end(buf, end)?.map(|next| (next, version, code)))
        }
        Some(b'\r' | b'\n') => Ok(line_end(buf, i)?.map(|next| (next, version, code))),
        Some(_) => Err(Invalid),
    }
}

/// Where the line whose text ends at `end` is over (past its CRLF or LF): `Ok(None)` when the
/// buffer ends first, `Invalid` when the byte at `end` (the first one the text may not hold)
/// is not a line end.
fn line_end(buf: &[u8], end: usize) -> Result<Option<usize>, Invalid> {
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(end + 1)),
        Some(b'\r') => match buf.get(end + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(end + 2)),
            Some(_) => Err(Invalid),
        },
        Some(_) => Err(Invalid),
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first byte from `i` on that a field value or a reason phrase may not hold (any
/// control character but the tab, and DEL), or the buffer's length.
fn text_end(buf: &[u8], mut i: usize) -> usize {
    while let Some(word) = buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*word);
        // Per byte, the high bit: set in `ctl` for a byte below 0x20, in `del` for 0x7f. A
        // byte's borrow reaches only the bytes after it, so the first byte marked is exact.
        let ctl = w.wrapping_sub(0x20 * ONES) & !w & HIGH;
        let d = w ^ (0x7f * ONES);
        let del = d.wrapping_sub(ONES) & !d & HIGH;
        let marked = ctl | del;
        if marked == 0 {
            i += 8;
            continue;
        }
        let at = i + (marked.trailing_zeros() / 8) as usize;
        if buf[at] != b'\t' {
            return at;
        }
        i = at + 1;
    }
    while buf
        .get(i)
        .is_some_and(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        i += 1;
    }
    i
}

/// The first byte from `i` on that a field name may not hold, or the buffer's length. Names
/// are mostly letters, digits and dashes: eight of those at a time are let through at once,
/// and any other byte is looked up.
fn name_end(buf: &[u8], mut i: usize) -> usize {
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

/// RFC 9110's `tchar`: the bytes a field name is made of.
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

    /// What a parser made of a head: the status line and each field's name and value, or
    /// `None` while incomplete, or `Err` when invalid.
    type Outcome = Result<Option<(StatusLine, Vec<(Vec<u8>, Vec<u8>, usize)>)>, ()>;

    fn ours(buf: &[u8], max: usize) -> Outcome {
        let mut few = [(0, 0, 0, 0); FEW_HEADERS];
        match parse(buf, &mut few, max) {
            Err(Invalid) => Err(()),
            Ok(None) => Ok(None),
            Ok(Some((line, spans))) => Ok(Some((
                line,
                spans
                    .iter()
                    .map(|&(n, nl, v, vl)| (buf[n..n + nl].to_vec(), buf[v..v + vl].to_vec(), n))
                    .collect(),
            ))),
        }
    }

    fn httparse(buf: &[u8], max: usize) -> Outcome {
        let mut slots = vec![httparse::EMPTY_HEADER; max];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(buf) {
            Err(_) => Err(()),
            Ok(httparse::Status::Partial) => Ok(None),
            Ok(httparse::Status::Complete(len)) => {
                let line = StatusLine {
                    len,
                    version: resp.version.unwrap(),
                    code: resp.code.unwrap(),
                };
                let base = buf.as_ptr() as usize;
                let fields = resp
                    .headers
                    .iter()
                    .map(|h| {
                        let at = h.name.as_ptr() as usize - base;
                        (h.name.as_bytes().to_vec(), h.value.to_vec(), at)
                    })
                    .collect();
                Ok(Some((line, fields)))
            }
        }
    }

    /// Both parsers on the whole head and on every prefix of it.
    fn same(buf: &[u8], max: usize) {
        for end in 0..=buf.len() {
            let part = &buf[..end];
            assert_eq!(
                ours(part, max),
                httparse(part, max),
                "max {max}, input {:?}",
                String::from_utf8_lossy(part)
            );
        }
    }

    #[test]
    fn nginx_answer() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 10:13:12 GMT\r\n\
            Content-Type: application/json\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n\r\n{\"value\":[]}";
        let Ok(Some((line, fields))) = ours(head, 128) else {
            panic!("not parsed");
        };
        assert_eq!(line.len, head.len() - 12);
        assert_eq!((line.version, line.code), (1, 200));
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[1].0, b"Date");
        assert_eq!(fields[1].1, b"Mon, 30 Nov 2026 10:13:12 GMT");
        same(head, 128);
    }

    #[test]
    fn edge_cases_match_httparse() {
        let cases: &[&[u8]] = &[
            b"HTTP/1.0 404\r\n\r\n",
            b"HTTP/1.1 200\n\n",
            b"\r\n\nHTTP/1.1 204 No Content\r\n\r\n",
            b"\rHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA:\r\nB: \t \r\nC:x \t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: a\tb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n A: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\x7fc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: caf\xc3\xa9 \xff\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA\xc3: b\r\n\r\n",
            b"HTTP/1.1 200 \xffOK\tfine\r\n\r\n",
            b"HTTP/1.1 200 O\x01K\r\n\r\n",
            b"HTTP/1.1 200 OK\r\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"http/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\rx",
            b"HTTP/1.1 200 OK\r\nA: 0123456789abcdef0123456789\t\t0123456789\r\n\r\n",
        ];
        for case in cases {
            for max in [0, 1, 2, 128] {
                same(case, max);
            }
        }
    }

    #[test]
    fn many_fields_leave_the_stack() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..(FEW_HEADERS + 5) {
            head.extend_from_slice(format!("x-field-{i}: value {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        same(&head, 128);
        same(&head, FEW_HEADERS + 4);
        let Ok(Some((_, fields))) = ours(&head, 128) else {
            panic!("not parsed");
        };
        assert_eq!(fields.len(), FEW_HEADERS + 5);
    }

    /// Bytes a head is made of, the ones that matter to the grammar weighted up.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => prop::sample::select(vec![
                &b"\r\n"[..], b"\n", b"\r", b": ", b":", b" ", b"\t", b"HTTP/1.1 ", b"HTTP/1.0 ",
                b"200", b" OK", b"Content-Length", b"Date", b"x-a", b"value", b"\r\n\r\n",
            ]).prop_map(<[u8]>::to_vec),
            4 => prop::collection::vec(b'a'..=b'z', 1..12),
            2 => prop::collection::vec(any::<u8>(), 1..4),
            1 => prop::collection::vec(
                prop::sample::select(vec![0u8, 1, 9, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xff, b'(', b'"']),
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
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn same_as_httparse(h in head(), max in prop::sample::select(vec![0usize, 1, 3, 128])) {
            same(&h, max);
            // And the same head closed, which reaches the end more often.
            let mut closed = h.clone();
            closed.extend_from_slice(b"\r\n\r\n");
            same(&closed, max);
        }

        #[test]
        fn name_end_is_the_first_byte_not_allowed(bytes in prop::collection::vec(
            prop_oneof![4 => prop::sample::select(b"abzAZ09-_.:~ @[`{\x7f\x80\xff\x00/".to_vec()), 1 => any::<u8>()],
            0..40,
        ), from in 0usize..40) {
            let from = from.min(bytes.len());
            let slow = bytes[from..]
                .iter()
                .position(|&b| !TOKEN[usize::from(b)])
                .map_or(bytes.len(), |p| from + p);
            prop_assert_eq!(name_end(&bytes, from), slow);
        }

        #[test]
        fn text_end_is_the_first_byte_not_allowed(bytes in prop::collection::vec(any::<u8>(), 0..40), from in 0usize..40) {
            let from = from.min(bytes.len());
            let slow = bytes[from..]
                .iter()
                .position(|&b| !(b == b'\t' || (b >= 0x20 && b != 0x7f)))
                .map_or(bytes.len(), |p| from + p);
            prop_assert_eq!(text_end(&bytes, from), slow);
        }
    }
}
