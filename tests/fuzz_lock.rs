//! `fuzz/` is its own workspace with its own `Cargo.lock`, which the main build never reads:
//! a dependency added to the crate must be added there too, or a fresh `cargo fuzz run`
//! rewrites the file (`cd fuzz && cargo update -w` refreshes it).

use std::path::Path;

fn lock(rel: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The names `defender-proxy` depends on in a lock file (without versions).
fn crate_dependencies(lock: &toml::Table) -> Vec<String> {
    let packages = lock["package"].as_array().unwrap();
    let me = packages
        .iter()
        .find(|p| p["name"].as_str() == Some("defender-proxy"))
        .expect("defender-proxy is locked");
    let mut names: Vec<String> = me
        .get("dependencies")
        .and_then(toml::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn the_fuzz_lock_file_has_every_dependency_of_the_crate() {
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap(),
    )
    .unwrap();
    // Dev-dependencies are locked for the crate's own tests only.
    let normal = manifest["dependencies"].as_table().unwrap();
    let dev = manifest["dev-dependencies"].as_table().unwrap();
    let wanted: Vec<String> = crate_dependencies(&lock("Cargo.lock"))
        .into_iter()
        .filter(|d| normal.contains_key(d) || !dev.contains_key(d))
        .collect();
    assert_eq!(
        crate_dependencies(&lock("fuzz/Cargo.lock")),
        wanted,
        "fuzz/Cargo.lock is stale: run `cargo update -w` in fuzz/"
    );
}
