//! Paging links that lead back through the proxy: in JSON answers, the values of
//! `@odata.nextLink` and `@odata.deltaLink` that point at the route's upstream are rewritten to
//! the proxy's own origin (and the route's prefix), as is a `Location` header. The body is
//! rewritten while it streams, with a carry-over of at most a few hundred bytes, so memory is
//! bounded whatever the size and a link split across chunks is still found. Nothing else in
//! the body is touched.

use bytes::{Bytes, BytesMut};

/// The JSON keys whose values are rewritten.
const KEYS: [&[u8]; 2] = [b"\"@odata.nextLink\"", b"\"@odata.deltaLink\""];
/// Whitespace allowed around the `:` of a key (more is not a match).
const MAX_WS: usize = 32;

/// Whether `body` may hold a paging link at all (`"@odata.` appears); most answers do not, and
/// are passed on untouched.
pub fn may_contain_link(body: &[u8]) -> bool {
    // Looked for by its `@`, which JSON seldom holds elsewhere.
    memchr::memchr_iter(b'@', body)
        .any(|i| i > 0 && body[i - 1] == b'"' && body[i + 1..].starts_with(b"odata."))
}

/// What to replace with what, for one request.
#[derive(Debug, Clone)]
pub struct LinkRewriter {
    /// Upstream origin and base path: plain, then with `\/` escapes.
    from: [Vec<u8>; 2],
    /// The proxy's origin and the client-side prefix, in the same two forms.
    to: [Vec<u8>; 2],
}

impl LinkRewriter {
    /// Links under `upstream` (origin and base path, no trailing slash) become links under
    /// `proxy` (the client's origin plus the part of the path the route strips).
    pub fn new(upstream: &str, proxy: &str) -> Self {
        let esc = |s: &str| s.replace('/', "\\/").into_bytes();
        LinkRewriter {
            from: [upstream.as_bytes().to_vec(), esc(upstream)],
            to: [proxy.as_bytes().to_vec(), esc(proxy)],
        }
    }

    /// Rewrites a header value such as `Location`; `None` when it does not point upstream.
    pub fn rewrite_location(&self, value: &str) -> Option<String> {
        let from = std::str::from_utf8(&self.from[0]).ok()?;
        let rest = value.strip_prefix(from)?;
        if !rest.is_empty() && !rest.starts_with(['/', '?', '#']) {
            return None;
        }
        Some(format!("{}{rest}", std::str::from_utf8(&self.to[0]).ok()?))
    }

    fn max_pattern(&self) -> usize {
        KEYS[1].len() + 2 * MAX_WS + 2 + self.from[1].len() + 1
    }

    /// The position where a link value starts at `p` (a `"@odata.` key), and which form
    /// matched. `None` when there is no rewritable link there or the data ends too soon.
    fn match_at(&self, data: &[u8], p: usize) -> Option<(usize, usize)> {
        let key = KEYS.iter().find(|k| data[p..].starts_with(k))?;
        let mut j = skip_ws(data, p + key.len())?;
        if data.get(j) != Some(&b':') {
            return None;
        }
        j = skip_ws(data, j + 1)?;
        if data.get(j) != Some(&b'"') {
            return None;
        }
        let v = j + 1;
        (0..2).find_map(|form| {
            let from = &self.from[form];
            let boundary = data.get(v + from.len())?;
            (data[v..].starts_with(from) && matches!(boundary, b'/' | b'?' | b'"' | b'#' | b'\\'))
                .then_some((v, form))
        })
    }
}

fn skip_ws(data: &[u8], mut j: usize) -> Option<usize> {
    let start = j;
    while j < data.len() && matches!(data[j], b' ' | b'\t' | b'\r' | b'\n') {
        j += 1;
        if j - start > MAX_WS {
            return None;
        }
    }
    Some(j)
}

/// The streaming state: the bytes held back because a link might straddle the next chunk.
#[derive(Debug)]
pub struct RewriteState {
    rewriter: LinkRewriter,
    carry: BytesMut,
}

impl RewriteState {
    /// A new stream.
    pub fn new(rewriter: LinkRewriter) -> Self {
        RewriteState {
            rewriter,
            carry: BytesMut::new(),
        }
    }

    /// Takes the next chunk; returns what can be sent now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.carry.extend_from_slice(chunk);
        self.process(false)
    }

    /// The end of the body: returns the rest.
    pub fn finish(&mut self) -> Bytes {
        self.process(true)
    }

    fn process(&mut self, last: bool) -> Bytes {
        let data = std::mem::take(&mut self.carry);
        let limit = if last {
            data.len()
        } else {
            data.len().saturating_sub(self.rewriter.max_pattern())
        };
        let mut out = BytesMut::with_capacity(data.len() + 64);
        let (mut emitted, mut search) = (0, 0);
        while let Some(off) = memchr::memchr(b'@', &data[search..]) {
            let at = search + off;
            let Some(p) = at.checked_sub(1).filter(|p| *p < limit) else {
                if at == 0 {
                    search = at + 1;
                    continue;
                }
                break;
            };
            match self.rewriter.match_at(&data, p) {
                Some((value, form)) => {
                    out.extend_from_slice(&data[emitted..value]);
                    out.extend_from_slice(&self.rewriter.to[form]);
                    emitted = value + self.rewriter.from[form].len();
                    search = emitted;
                }
                None => search = at + 1,
            }
        }
        let end = emitted.max(limit);
        out.extend_from_slice(&data[emitted..end]);
        self.carry.extend_from_slice(&data[end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests;
