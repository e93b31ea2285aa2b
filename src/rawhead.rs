//! A head's fields kept as the bytes they came in, forwarded without building a header map
//! (hashing, allocating and dropping one per head cost more than all the rest of the head's
//! handling, by callgrind).
//!
//! An HTTP/1.1 answer from the upstream carries its fields as [`RawHeaders`] with its body
//! (`UpBody::fields`, then `ResponseBody::fields`: one allocation, where the response's
//! extensions cost three), and the response's header map holds only what the proxy itself
//! sets. A field of the map replaces the raw fields of the same name. Readers go through
//! [`get`] and [`contains`], which see both; a path that needs the whole map (HTTP/2 to the
//! client, the throttling path) takes the fields from the body and calls [`materialize`].
//!
//! An HTTP/1.1 request from a client carries its fields the same way, beside the request
//! (whose map is then empty): the proxy reads the few it looks at by [`Known`], and writes
//! the others upstream as they came ([`RawHeaders::write_forwarded`]); the fields it never
//! forwards are marked as the head is parsed.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::front::{Fields, Span};

/// Fields kept by position; an answer with more is parsed into a header map as before.
pub const MAX_FIELDS: usize = 32;

/// The fields the proxy looks up in an answer, found once as the head is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// `Content-Type`.
    ContentType,
    /// `Content-Length`.
    ContentLength,
    /// `Location`.
    Location,
    /// `Date`.
    Date,
    /// `request-id`, the upstream's own request ID.
    RequestId,
    /// `client-request-id`.
    ClientRequestId,
    /// `Host` (a request's).
    Host,
    /// `Origin` (a request's).
    Origin,
    /// `Sec-Fetch-Site` (a request's).
    SecFetchSite,
    /// `Authorization` (a request's; never forwarded).
    Authorization,
    /// `x-defender-proxy-key`, the inbound shared key (never forwarded).
    InboundKey,
    /// `Expect` (a request's).
    Expect,
}

const KNOWN: usize = 12;

impl Known {
    /// The field's name, for the header map.
    pub fn name(self) -> HeaderName {
        match self {
            Known::ContentType => header::CONTENT_TYPE,
            Known::ContentLength => header::CONTENT_LENGTH,
            Known::Location => header::LOCATION,
            Known::Date => header::DATE,
            Known::RequestId => HeaderName::from_static("request-id"),
            Known::ClientRequestId => HeaderName::from_static("client-request-id"),
            Known::Host => header::HOST,
            Known::Origin => header::ORIGIN,
            Known::SecFetchSite => HeaderName::from_static("sec-fetch-site"),
            Known::Authorization => header::AUTHORIZATION,
            Known::InboundKey => HeaderName::from_static("x-defender-proxy-key"),
            Known::Expect => header::EXPECT,
        }
    }

    /// A request's field the proxy never forwards as it came: the upstream's `Host`, the
    /// bearer and the request ID are the proxy's own, the framing is the proxy's, and the
    /// inbound key is a secret for the proxy alone.
    fn private(self) -> bool {
        matches!(
            self,
            Known::Host
                | Known::Authorization
                | Known::ClientRequestId
                | Known::InboundKey
                | Known::ContentLength
        )
    }
}

/// What a field is, by its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    /// Hop-by-hop (RFC 9110 §7.6.1), never forwarded: the same list as the header-map path.
    Hop,
    Connection,
    TransferEncoding,
    Known(Known),
}

/// Sorts a field by its name (any case): by length first, so that most names are compared
/// with one candidate at most.
fn kind(name: &[u8]) -> Kind {
    let is = |s: &str| is_name(name, s.as_bytes());
    match name.len() {
        2 if is("te") => Kind::Hop,
        4 if is("date") => Kind::Known(Known::Date),
        4 if is("host") => Kind::Known(Known::Host),
        6 if is("origin") => Kind::Known(Known::Origin),
        6 if is("expect") => Kind::Known(Known::Expect),
        7 if is("upgrade") || is("trailer") => Kind::Hop,
        8 if is("location") => Kind::Known(Known::Location),
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::Hop,
        10 if is("request-id") => Kind::Known(Known::RequestId),
        12 if is("content-type") => Kind::Known(Known::ContentType),
        13 if is("authorization") => Kind::Known(Known::Authorization),
        14 if is("content-length") => Kind::Known(Known::ContentLength),
        14 if is("sec-fetch-site") => Kind::Known(Known::SecFetchSite),
        16 if is("proxy-connection") => Kind::Hop,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("client-request-id") => Kind::Known(Known::ClientRequestId),
        18 if is("proxy-authenticate") => Kind::Hop,
        19 if is("proxy-authorization") => Kind::Hop,
        20 if is("x-defender-proxy-key") => Kind::Known(Known::InboundKey),
        _ => Kind::Other,
    }
}

/// Whether `name` is `lower` (lowercase ASCII) in any case, eight bytes at a time: what
/// `eq_ignore_ascii_case` says, for about half the instructions on names of 10 to 20 bytes
/// (each field of both heads is sorted by its name, and each Host checked).
#[inline]
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    let n = lower.len();
    if name.len() != n {
        return false;
    }
    if n < 8 {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        a[..n].copy_from_slice(name);
        b[..n].copy_from_slice(lower);
        return lowercase8(u64::from_le_bytes(a)) == u64::from_le_bytes(b);
    }
    // Words at 0, 8, ... and the last eight bytes (which may overlap the word before).
    let word = |s: &[u8], at: usize| s[at..].first_chunk::<8>().map(|w| u64::from_le_bytes(*w));
    let mut at = 0;
    loop {
        let at_most = at.min(n - 8);
        if word(name, at_most).map(lowercase8) != word(lower, at_most) {
            return false;
        }
        if at_most == n - 8 {
            return true;
        }
        at += 8;
    }
}

/// The eight bytes of `x` with ASCII uppercase letters made lowercase, and every other byte
/// as it is.
#[inline]
const fn lowercase8(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Per byte, below 0x80 (no carry into the next byte): the high bit of b + 0x3f is set
    // when b >= b'A', that of b + 0x25 when b > b'Z'.
    let b = x & !HIGH;
    let at_least_a = b.wrapping_add(0x3f3f_3f3f_3f3f_3f3f);
    let past_z = b.wrapping_add(0x2525_2525_2525_2525);
    let upper = at_least_a & !past_z & !x & HIGH;
    // 0x80 >> 2 is the 0x20 that makes an uppercase letter lowercase.
    x | (upper >> 2)
}

/// The forwardable fields of a head, by position in the head's bytes.
#[derive(Clone)]
pub struct RawHeaders {
    head: Bytes,
    fields: [Field; MAX_FIELDS],
    len: u8,
    /// Where each known field first is (its index + 1; 0: absent).
    known: [u8; KNOWN],
    /// The fields a request never forwards as they came (bit i: field i; see `Known::private`).
    private: u32,
}

#[derive(Clone, Copy, Default)]
struct Field {
    name: u16,
    name_len: u16,
    value: u16,
    value_len: u16,
}

impl std::fmt::Debug for RawHeaders {
    // Names only: values may carry anything the upstream sent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, _)| String::from_utf8_lossy(n)))
            .finish()
    }
}

thread_local! {
    /// An answer's fields box, given back once the answer's head was written: the next answer
    /// read on this thread fills it, instead of allocating (and zeroing) one of its own.
    static SPARE: std::cell::Cell<Option<Box<RawHeaders>>> = const { std::cell::Cell::new(None) };
}

/// The box [`give_back`] left on this thread, if any.
pub(crate) fn spare() -> Option<Box<RawHeaders>> {
    SPARE.try_with(std::cell::Cell::take).ok().flatten()
}

/// Keeps `raw`'s box for the next answer read on this thread, its head let go.
pub(crate) fn give_back(mut raw: Box<RawHeaders>) {
    raw.release();
    let _ = SPARE.try_with(|s| s.set(Some(raw)));
}

impl RawHeaders {
    /// Lets go of the head's bytes (shared with the connection's read buffer, which can then
    /// reuse its memory) and of its fields, keeping the box for the next head.
    pub(crate) fn release(&mut self) {
        self.head = Bytes::new();
        self.len = 0;
    }

    /// The fields of `head` at `spans` (as `h1parse` found and checked them), with what they
    /// say about the framing, in one pass. Left out: the hop-by-hop fields, those the
    /// `Connection` field names, and `Content-Length` next to `Transfer-Encoding` (framed by the
    /// coding, RFC 9112 §6.3). `Ok(None)` when the head has more than [`MAX_FIELDS`] fields or
    /// is longer than 64 KiB; `Err` as [`header_fields`](crate::front::header_fields) has it.
    /// Boxed from the start: the answer's head is handed on through several layers. Filled
    /// into `spare` (the box of an earlier head, see [`release`](Self::release)) when there is
    /// one: a connection's requests reuse one, and the answers read on a thread one.
    pub(crate) fn parse_into(
        spare: Option<Box<RawHeaders>>,
        head: Bytes,
        spans: &[Span],
    ) -> Result<Option<(Box<RawHeaders>, Fields)>, &'static str> {
        if spans.len() > MAX_FIELDS || head.len() > usize::from(u16::MAX) {
            return Ok(None);
        }
        let mut framing = Fields::new();
        let mut raw = match spare {
            // Fields past `len` are never read: they need no clearing.
            Some(mut raw) => {
                raw.head = head;
                raw.len = 0;
                raw.known = [0; KNOWN];
                raw.private = 0;
                raw
            }
            None => Box::new(RawHeaders {
                head,
                fields: [Field::default(); MAX_FIELDS],
                len: 0,
                known: [0; KNOWN],
                private: 0,
            }),
        };
        let mut named_by_connection = false;
        for &(n, nl, v, vl) in spans {
            let name = &raw.head[n..n + nl];
            let k = kind(name);
            let value = &raw.head[v..v + vl];
            match k {
                Kind::Hop => continue,
                Kind::Connection => {
                    // One naming more than close/keep-alive names fields to drop.
                    named_by_connection |= framing.note_connection(value);
                    continue;
                }
                Kind::TransferEncoding => {
                    framing.note_encoding(value);
                    continue;
                }
                Kind::Known(Known::ContentLength) => framing.note_length(value)?,
                Kind::Known(Known::Expect) => {
                    framing.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
                }
                _ => {}
            }
            let i = usize::from(raw.len);
            if let Kind::Known(known) = k {
                if raw.known[known as usize] == 0 {
                    raw.known[known as usize] = raw.len + 1;
                }
                if known.private() {
                    raw.private |= 1 << i;
                }
            }
            // In range: the head is at most u16::MAX long, and there are at most MAX_FIELDS.
            raw.fields[i] = Field {
                name: n as u16,
                name_len: nl as u16,
                value: v as u16,
                value_len: vl as u16,
            };
            raw.len += 1;
        }
        if named_by_connection || framing.chunked.is_some() {
            raw.drop_named(framing.chunked.is_some());
        }
        Ok(Some((raw, framing)))
    }

    /// Drops the fields a `Connection` field names, and with `length` the Content-Length (the
    /// rare case; the known positions are found again).
    fn drop_named(&mut self, length: bool) {
        let head = self.head.clone();
        let tokens: Vec<&[u8]> = head
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let (n, v) = line.split_at(line.iter().position(|b| *b == b':')?);
                n.eq_ignore_ascii_case(b"connection").then_some(&v[1..])
            })
            .flat_map(|v| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect();
        let mut kept = 0;
        self.known = [0; KNOWN];
        self.private = 0;
        for i in 0..usize::from(self.len) {
            let f = self.fields[i];
            let name = &head[usize::from(f.name)..usize::from(f.name) + usize::from(f.name_len)];
            let k = kind(name);
            if tokens.iter().any(|t| name.eq_ignore_ascii_case(t))
                || (length && k == Kind::Known(Known::ContentLength))
            {
                continue;
            }
            if let Kind::Known(known) = k {
                if self.known[known as usize] == 0 {
                    self.known[known as usize] = kept + 1;
                }
                if known.private() {
                    self.private |= 1 << kept;
                }
            }
            self.fields[usize::from(kept)] = f;
            kept += 1;
        }
        self.len = kept;
    }

    fn field(&self, f: &Field) -> (&[u8], &[u8]) {
        let (n, v) = (usize::from(f.name), usize::from(f.value));
        (
            &self.head[n..n + usize::from(f.name_len)],
            &self.head[v..v + usize::from(f.value_len)],
        )
    }

    /// The fields, names as sent (any case), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields[..usize::from(self.len)]
            .iter()
            .map(|f| self.field(f))
    }

    /// Writes the fields as `name: value` lines (as they came, names in their case) but for
    /// those `skip` refuses (by name); runs of lines that lie side by side in the
    /// head (the usual case) are copied in one piece.
    pub fn write_to(&self, out: &mut Vec<u8>, mut skip: impl FnMut(&[u8]) -> bool) {
        self.write_lines(out, |_, name| skip(name));
    }

    /// Writes a request's fields for the upstream: all but the private ones (see
    /// [`Known::private`]) and the tenant header (`tenant`, lower case).
    pub fn write_forwarded(&self, out: &mut Vec<u8>, tenant: &[u8]) {
        self.write_lines(out, |i, name| !self.forwards(i, name, tenant));
    }

    /// The fields a request forwards (see [`write_forwarded`](Self::write_forwarded)).
    pub fn forwarded<'a>(&'a self, tenant: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.fields[..usize::from(self.len)]
            .iter()
            .enumerate()
            .map(|(i, f)| (i, self.field(f)))
            .filter(move |(i, (name, _))| self.forwards(*i, name, tenant))
            .map(|(_, field)| field)
    }

    /// Does a request forward its field `i`, named `name`?
    fn forwards(&self, i: usize, name: &[u8], tenant: &[u8]) -> bool {
        self.private & (1 << i) == 0 && !is_name(name, tenant)
    }

    /// The first value of a field named `name` (lower case), looked for one by one.
    pub fn find(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn write_lines(&self, out: &mut Vec<u8>, mut skip: impl FnMut(usize, &[u8]) -> bool) {
        let mut run: Option<(usize, usize)> = None;
        for (i, f) in self.fields[..usize::from(self.len)].iter().enumerate() {
            let (start, end) = (
                usize::from(f.name),
                usize::from(f.value) + usize::from(f.value_len),
            );
            if skip(i, &self.head[start..start + usize::from(f.name_len)]) {
                if let Some((a, b)) = run.take() {
                    push_lines(out, &self.head[a..b]);
                }
                continue;
            }
            run = match run {
                // The next line: CRLF after the last value, then this name. (The parser also
                // takes a bare LF; such lines are copied one by one.)
                Some((a, b)) if start == b + 2 && &self.head[b..start] == b"\r\n" => Some((a, end)),
                Some((a, b)) => {
                    push_lines(out, &self.head[a..b]);
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((a, b)) = run {
            push_lines(out, &self.head[a..b]);
        }
    }

    /// The first value of a known field.
    pub fn get(&self, known: Known) -> Option<&[u8]> {
        match self.known[known as usize] {
            0 => None,
            i => Some(self.field(&self.fields[usize::from(i) - 1]).1),
        }
    }

    /// The first value of a known field, sharing the head's bytes.
    pub fn value(&self, known: Known) -> Option<HeaderValue> {
        self.get(known).and_then(|v| self.shared(v))
    }

    /// A value of these fields (a slice of the head) as a value of its own, sharing the bytes;
    /// `None` for a slice of anything else.
    pub fn shared(&self, v: &[u8]) -> Option<HeaderValue> {
        let start = (v.as_ptr() as usize).checked_sub(self.head.as_ptr() as usize)?;
        let end = start
            .checked_add(v.len())
            .filter(|e| *e <= self.head.len())?;
        HeaderValue::from_maybe_shared(self.head.slice(start..end)).ok()
    }

    /// Appends the fields whose names `map` does not have (the map's replace them).
    pub fn merge_into(&self, map: &mut HeaderMap) {
        let had: Vec<HeaderName> = map.keys().cloned().collect();
        for (n, v) in self.iter() {
            // The head's parser has checked both: a field these refuse cannot have come
            // through it.
            let (Ok(name), Some(value)) = (HeaderName::from_bytes(n), self.shared(v)) else {
                continue;
            };
            if !had.contains(&name) {
                map.append(name, value);
            }
        }
    }
}

/// A header value as text, if it is visible ASCII (what `HeaderValue::to_str` accepts).
pub fn visible(v: &[u8]) -> Option<&str> {
    visible_bytes(v).and_then(|v| std::str::from_utf8(v).ok())
}

/// A header value if it is visible ASCII, as bytes: `visible` without the conversion to text,
/// which costs more than the check for a short value.
pub fn visible_bytes(v: &[u8]) -> Option<&[u8]> {
    // Every byte looked at, without an early exit: the compiler then checks many at once.
    let ok = v
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(32) < 95 || b == b'\t'));
    ok.then_some(v)
}

/// Lines of fields (separated by CRLF), and the CRLF after the last.
fn push_lines(out: &mut Vec<u8>, lines: &[u8]) {
    out.extend_from_slice(lines);
    out.extend_from_slice(b"\r\n");
}

/// Is `name` (bytes as sent, any case) among `map`'s names? A linear look: the map holds the
/// proxy's own few fields.
pub fn overridden(map: &HeaderMap, name: &[u8]) -> bool {
    !map.is_empty()
        // A map's names are lowercase.
        && map.keys().any(|k| is_name(name, k.as_str().as_bytes()))
}

/// The first value of a known field in a response's fields: the map's, else the raw ones'.
pub fn get<'a>(
    headers: &'a HeaderMap,
    raw: Option<&'a RawHeaders>,
    known: Known,
) -> Option<&'a [u8]> {
    if !headers.is_empty() {
        if let Some(v) = headers.get(known.name()) {
            return Some(v.as_bytes());
        }
    }
    raw.and_then(|raw| raw.get(known))
}

/// The first value of a known field, the map's or the raw fields', as a value of its own.
pub fn value(headers: &HeaderMap, raw: Option<&RawHeaders>, known: Known) -> Option<HeaderValue> {
    if !headers.is_empty() {
        if let Some(v) = headers.get(known.name()) {
            return Some(v.clone());
        }
    }
    raw.and_then(|raw| raw.value(known))
}

/// Do a response's fields, the map or the raw ones, have a known field?
pub fn contains(headers: &HeaderMap, raw: Option<&RawHeaders>, known: Known) -> bool {
    get(headers, raw, known).is_some()
}

/// Moves raw fields (taken from the body) into the header map, for the paths that need one
/// whole map.
pub fn materialize(headers: &mut HeaderMap, raw: Option<Box<RawHeaders>>) {
    if let Some(raw) = raw {
        raw.merge_into(headers);
    }
}

#[cfg(test)]
mod tests;
