//! Python for the script tests: `python3` with the packages a test imports, installed under
//! `target/` when missing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `PYTHONPATH` under which `import requests` works, installing it under `target/python`
/// once if needed.
pub fn python_path() -> String {
    python_path_for("requests", "requests", "target/python")
}

/// A `PYTHONPATH` under which `import {module}` works, installing `package` under `dir`
/// (relative to the package root) once if needed. Fails the test, never skips it, when it
/// cannot.
pub fn python_path_for(module: &str, package: &str, dir: &str) -> String {
    let ok = |path: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .env("PYTHONPATH", path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("") {
        return String::new();
    }
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let dir = dir.to_str().unwrap().to_string();
    if !ok(&dir) {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target", &dir, package])
            .status()
            .expect("python3 is needed for the script tests");
        assert!(status.success(), "pip could not install {package}");
    }
    assert!(ok(&dir), "{module} is still not importable from {dir}");
    dir
}
