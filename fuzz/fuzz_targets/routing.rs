//! A generated partner config (aliases, `"*"`, pinned routes, prefixes with and without
//! trailing slashes, upstream base paths), then request paths and tenant header values: the
//! longest prefix wins, an accepted path stays below its route upstream, a tenant is the one
//! the name means and never a multi-tenant name.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties/oracle.rs"]
mod oracle;

const SEGMENTS: [&str; 10] = ["api", "mde", "a", "ab", "A", "x.y", "", "..", "%2e", "ü"];
const GUIDS: [&str; 5] = [
    oracle::GUID_A,
    oracle::GUID_B,
    oracle::GUID_C,
    "AAAAAAAA-4444-4444-4444-444444444444",
    "*",
];
const UPSTREAMS: [&str; 5] = [
    "xdr",
    "https://example.test",
    "https://example.test/base/",
    "https://example.test/base/deeper",
    "http://127.0.0.1:9/up",
];

#[derive(Debug, Arbitrary)]
enum Text {
    /// Segments from `SEGMENTS` joined by `/`, with a leading `/`.
    Segments(Vec<u8>, bool),
    Raw(String),
}

impl Text {
    fn render(&self) -> String {
        match self {
            Text::Segments(segs, slash) => {
                let segs: Vec<&str> = segs.iter().map(|i| SEGMENTS[*i as usize % 10]).collect();
                format!("/{}{}", segs.join("/"), if *slash { "/" } else { "" })
            }
            Text::Raw(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Pin {
    /// The alias of the n-th tenant entry.
    Alias(u8),
    Guid(u8),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    home_is_domain: bool,
    tenants: Vec<(String, u8)>,
    routes: Vec<(Text, bool, u8, Option<Pin>)>,
    paths: Vec<Text>,
    headers: Vec<Vec<u8>>,
}

impl Input {
    fn spec(&self) -> oracle::Spec {
        let tenants: Vec<(String, String)> = self
            .tenants
            .iter()
            .take(6)
            .map(|(alias, g)| (alias.clone(), GUIDS[*g as usize % GUIDS.len()].to_string()))
            .collect();
        let pin = |p: &Pin| match p {
            Pin::Alias(i) if !tenants.is_empty() => tenants[*i as usize % tenants.len()].0.clone(),
            Pin::Alias(_) => "contoso".to_string(),
            Pin::Guid(i) => GUIDS[*i as usize % GUIDS.len()].to_string(),
            Pin::Raw(s) => s.clone(),
        };
        let routes = self
            .routes
            .iter()
            .take(8)
            .map(|(prefix, strip, up, p)| {
                let upstream = UPSTREAMS[*up as usize % UPSTREAMS.len()].to_string();
                (prefix.render(), *strip, upstream, p.as_ref().map(pin))
            })
            .collect();
        let home = if self.home_is_domain {
            "contoso.onmicrosoft.com"
        } else {
            oracle::GUID_A
        };
        oracle::Spec {
            home: home.to_string(),
            tenants,
            routes,
        }
    }
}

fuzz_target!(|input: Input| {
    let Ok(config) = oracle::check_config(&input.spec().toml()) else {
        return;
    };
    let router = oracle::router_of(&config);
    oracle::check_aliases(&config);
    for path in input.paths.iter().take(16) {
        oracle::check_route(&config, &router, &path.render());
    }
    for header in input.headers.iter().take(16) {
        oracle::check_tenant_header(&config, &router, header);
    }
});
