//! Python for the script tests: `python3` with `requests` importable.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `PYTHONPATH` under which `import requests` works, installing it under `target/python`
/// once if needed.
pub fn python_path() -> String {
    let ok = |path: &str| {
        Command::new("python3")
            .args(["-c", "import requests"])
            .env("PYTHONPATH", path)
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("") {
        return String::new();
    }
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python");
    let dir = dir.to_str().unwrap().to_string();
    if !ok(&dir) {
        let status = Command::new("python3")
            .args([
                "-m", "pip", "install", "--quiet", "--target", &dir, "requests",
            ])
            .status()
            .expect("python3 is needed for the script tests");
        assert!(status.success(), "pip could not install requests");
    }
    assert!(ok(&dir), "requests is still not importable from {dir}");
    dir
}
