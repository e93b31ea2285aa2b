//! Any bytes as `proxy.toml`: loading never panics, an error names a key path or a line, a
//! valid config validates again to the same thing and routes as written. The same text is
//! also `${VAR}`-expanded as one value.
#![no_main]

use defender_proxy::config::expand_str;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

const PATHS: [&str; 6] = [
    "/",
    "",
    "/api/incidents",
    "/mde/api/machines",
    "/a/../b",
    "/x%2f",
];
const HEADERS: [&[u8]; 5] = [
    b"contoso",
    oracle::GUID_B.as_bytes(),
    b"common",
    b"",
    b"x\xff",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(msg) = expand_str(text, &oracle::env) {
        assert!(!msg.is_empty() && !msg.contains(oracle::ENV_SECRET));
    }
    let Ok(config) = oracle::check_config(text) else {
        return;
    };
    let router = oracle::router_of(&config);
    oracle::check_aliases(&config);
    for path in PATHS {
        oracle::check_route(&config, &router, path);
    }
    for header in HEADERS {
        oracle::check_tenant_header(&config, &router, header);
    }
});
