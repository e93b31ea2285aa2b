//! Mutations of config text: lines deleted, duplicated, swapped, truncated or inserted,
//! keys and values replaced from pools of what `proxy.toml` knows, stray characters added.

use proptest::prelude::*;
use proptest::sample::Index;

/// Every key `proxy.toml` knows, and a few it does not.
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "listen", "admin_listen", "tenant_header", "request_timeout_secs", "max_request_body_bytes",
    "shutdown_grace_secs", "allowed_hosts", "allow_remote", "inbound_key", "inbound_key_file",
    "name", "authority_host", "extra_ca_file", "format", "level", "access_log", "type",
    "tenant_id", "client_id", "client_secret", "client_secret_file", "token_version",
    "token_url", "tenants", "certificate", "private_key", "certificate_password",
    "certificate_password_file", "assertion_alg", "send_certificate_chain", "token_file",
    "object_id", "resource_id", "endpoint", "token_store", "username", "password",
    "password_file", "prefix", "upstream", "scope", "credential", "strip_prefix", "tenant",
    "rate_limit", "region", "rewrite_links", "retry_throttled", "per_minute", "per_hour",
    "max_wait_secs", "contoso", "any", "server", "route", "\"a b\"", "\"\"", "a.b", "\"a.b\"",
];

/// Values that matter to some key, and values of every TOML type.
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "\"\"", "\"*\"", "\"common\"", "\"organizations\"", "\"consumers\"",
    "\"11111111-1111-1111-1111-111111111111\"", "\"22222222-2222-2222-2222-222222222222\"",
    "\"33333333-3333-3333-3333-33333333333G\"", "\"contoso\"", "\"Contoso\"", "\"app\"",
    "\"xdr\"", "\"mde\"", "\"graph\"", "\"https://example.test\"", "\"http://example.test\"",
    "\"http://127.0.0.1:1/x\"", "\"https://u:p@example.test\"", "\"https://h/?q=1\"",
    "\"https://h/#f\"", "\"ftp://h\"", "\"0.0.0.0:8080\"", "\"[::1]:0\"", "\"127.0.0.1:0\"",
    "\"/\"", "\"/mde/\"", "\"mde\"", "\"/api//\"", "\"//\"", "\"/..\"", "\"eu\"", "\"gcc-high\"",
    "\"china\"", "\"dod\"", "\"client_certificate\"", "\"device_code\"", "\"managed_identity\"",
    "\"password\"", "\"PS256\"", "\"x y\"", "\"${MISSING}\"", "\"${EMPTY:-dflt}\"",
    "\"${EMPTY}\"", "\"$${X}\"", "\"${1BAD}\"", "\"${\"", "\"${A:-${B}}\"", "\"$\"",
    "\"\\u0000\"", "\"\\r\\n\"", "'''raw\\'''", "\"\"\"multi\nline\"\"\"", "0", "1", "2", "-1",
    "18446744073709551615", "9223372036854775807", "4294967296", "1.5", "inf", "nan", "true",
    "false", "1979-05-27T07:32:00Z", "[]", "[1, \"a\"]", "[\"localhost\", \"\"]", "{}",
    "{ a = 1 }", "{ contoso = \"22222222-2222-2222-2222-222222222222\" }",
];

/// Lines inserted whole: headers of every table, and of tables that do not exist.
#[rustfmt::skip]
const LINES: &[&str] = &[
    "[server]", "[cloud]", "[tls]", "[log]", "[credentials.x]", "[credentials.app]",
    "[credentials.app.tenants]", "[[route]]", "[route]", "[[server]]", "[rate_limit.x]",
    "[rate_limit]", "[credentials]", "[credentials.app.tenants.x]", "any = \"*\"",
    "type = \"client_secret\"", "credential = \"x\"", "prefix = \"/\"", "", "#", "=", "[",
    "]]", "\"", "a = ", "a.b.c = 1",
];

/// One change to a config's text; an `Index` picks the line (and the column).
#[derive(Debug, Clone)]
pub enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    SetValue(Index, String),
    SetKey(Index, String),
    InsertLine(Index, String),
    InsertText(Index, String),
    Truncate(Index),
}

fn pick(pool: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(pool)
        .prop_map(str::to_string)
        .boxed()
}

pub fn value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => pick(VALUES),
        1 => "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
    .boxed()
}

pub fn key() -> BoxedStrategy<String> {
    prop_oneof![4 => pick(KEYS), 1 => "[a-z_]{1,10}"].boxed()
}

pub fn line() -> BoxedStrategy<String> {
    prop_oneof![
        2 => pick(LINES),
        3 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,20}",
    ]
    .boxed()
}

pub fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<Index>;
    prop_oneof![
        i().prop_map(Edit::DeleteLine),
        i().prop_map(Edit::DuplicateLine),
        (i(), i()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (i(), value()).prop_map(|(a, v)| Edit::SetValue(a, v)),
        (i(), key()).prop_map(|(a, k)| Edit::SetKey(a, k)),
        (i(), line()).prop_map(|(a, l)| Edit::InsertLine(a, l)),
        (
            i(),
            prop_oneof![
                pick(&["\"", "[", "]", "=", "\n", "#", "\\", "$", "{", "}", "."]),
                "\\PC{1,4}"
            ]
        )
            .prop_map(|(a, t)| Edit::InsertText(a, t)),
        i().prop_map(Edit::Truncate),
    ]
}

/// Applies `edits`, leaving alone the key and value of any line containing `protect`.
pub fn mutate(text: &str, edits: &[Edit], protect: &[&str]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let guarded = |l: &str| protect.iter().any(|p| l.contains(p));
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            Edit::DeleteLine(i) => {
                lines.remove(i.index(n));
            }
            Edit::DuplicateLine(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            Edit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
            Edit::SetValue(i, v) if !guarded(&lines[i.index(n)]) => {
                let l = &mut lines[i.index(n)];
                if let Some((k, _)) = l.split_once('=') {
                    *l = format!("{k}= {v}");
                }
            }
            Edit::SetKey(i, k) if !guarded(&lines[i.index(n)]) => {
                let l = &mut lines[i.index(n)];
                if let Some((_, v)) = l.split_once('=') {
                    *l = format!("{k} ={v}");
                }
            }
            Edit::InsertLine(i, l) => lines.insert(i.index(n + 1), l.clone()),
            Edit::InsertText(i, t) if !guarded(&lines[i.index(n)]) => {
                let l = &mut lines[i.index(n)];
                let at = floor_char_boundary(l, i.index(l.len() + 1));
                l.insert_str(at, t);
            }
            Edit::Truncate(i) => lines.truncate(i.index(n + 1)),
            _ => {}
        }
    }
    lines.join("\n")
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}
