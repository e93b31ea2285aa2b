//! Property tests: config parsing and `${VAR}` expansion never panic and always say where the
//! problem is; route and tenant resolution pick the longest prefix, keep paths below it and
//! never pick a tenant the config does not allow.
//!
//! Each property runs 256 cases by default; `PROPTEST_CASES=200000 cargo test --release
//! --test properties` runs them for longer. The checks themselves are in `oracle.rs`, which
//! the libFuzzer targets in `fuzz/` share.

mod common;

#[path = "properties/config.rs"]
mod config;
#[path = "properties/expand.rs"]
mod expand;
#[path = "properties/mutate.rs"]
mod mutate;
#[path = "properties/oracle.rs"]
mod oracle;
#[path = "properties/routing.rs"]
mod routing;

/// Case count from `PROPTEST_CASES` (default 256). Failures are not written to
/// `proptest-regressions/` files: each bug found gets a named test instead.
pub fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: None,
        ..Default::default()
    }
}
