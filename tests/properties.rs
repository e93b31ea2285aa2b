//! Property tests: config parsing and `${VAR}` expansion never panic and always say where the
//! problem is; route and tenant resolution pick the longest prefix, keep paths below it and
//! never pick a tenant the config does not allow.
//!
//! Each property runs 256 cases by default; `PROPTEST_CASES=200000 cargo test --release
//! --test properties` runs them for longer. The `fuzz/` crate drives the same code with
//! libFuzzer.

mod common;

#[path = "properties/config.rs"]
mod config;
#[path = "properties/expand.rs"]
mod expand;
#[path = "properties/mutate.rs"]
mod mutate;
#[path = "properties/routing.rs"]
mod routing;

use std::collections::HashMap;

use defender_proxy::config::Config;
use defender_proxy::routing::Router;

/// The home tenant of the test configs.
pub const GUID_A: &str = "11111111-1111-1111-1111-111111111111";
/// A customer tenant with an alias.
pub const GUID_B: &str = "22222222-2222-2222-2222-222222222222";
/// A tenant no config lists.
pub const GUID_C: &str = "33333333-3333-3333-3333-333333333333";
/// The client secret the environment holds; no error may show it.
pub const ENV_SECRET: &str = "EnvSecret~Zq81.x";

/// Case count from `PROPTEST_CASES` (default 256). Failures are not written to
/// `proptest-regressions/` files: each bug found gets a named test instead.
pub fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: None,
        ..Default::default()
    }
}

/// The environment of every property: the azure-identity variables and one empty variable.
pub fn env(name: &str) -> Option<String> {
    match name {
        "AZURE_TENANT_ID" => Some(GUID_A.into()),
        "AZURE_CLIENT_ID" => Some("client-id".into()),
        "AZURE_CLIENT_SECRET" => Some(ENV_SECRET.into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// The router the proxy would build: credentials indexed in name order, as `Runtime` does.
pub fn router_of(config: &Config) -> Router {
    let index: HashMap<String, usize> = config
        .credentials
        .keys()
        .enumerate()
        .map(|(i, name)| (name.clone(), i))
        .collect();
    Router::build(config, &index)
}
