//! Every whole config in the README (a ```toml block whose first line starts `# proxy.toml`)
//! passes `defender-proxy check`, and every `# -> TEXT` comment in it names something `check`
//! prints for that config (resolved upstream hosts, authorities, credential types, tenants).

mod common;

use std::path::Path;
use std::process::Command;

/// The README's whole configs, with the heading each is under.
fn whole_configs() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut configs = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    let mut other_fence = false;
    for line in readme.lines() {
        if other_fence {
            other_fence = !line.starts_with("```");
            continue;
        }
        match &mut block {
            Some(text) if line.starts_with("```") => {
                if text.starts_with("# proxy.toml") {
                    configs.push((heading.clone(), std::mem::take(text)));
                }
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line == "```toml" => block = Some(String::new()),
            None if line.starts_with("```") => other_fence = true,
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().into(),
            None => {}
        }
    }
    configs
}

#[test]
fn every_whole_config_in_the_readme_passes_check_and_prints_what_it_says() {
    let configs = whole_configs();
    assert!(configs.len() >= 12, "found only {} configs", configs.len());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The files the snippets name, placed under a temporary root.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for sub in [
        "etc/defender-proxy",
        "run/secrets",
        "var/lib/defender-proxy",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(
        fixtures.join("test-only-combined1.pem"),
        root.join("etc/defender-proxy/app.pem"),
    )
    .unwrap();
    std::fs::write(
        root.join("run/secrets/analyst-password"),
        "not-a-real-password\n",
    )
    .unwrap();
    std::fs::write(root.join("federated-token"), "header.payload.signature").unwrap();
    let mut seen_headings = Vec::new();
    for (heading, text) in configs {
        let text = [
            "/etc/defender-proxy/",
            "/run/secrets/",
            "/var/lib/defender-proxy/",
        ]
        .iter()
        .fold(text, |t, p| t.replace(p, &format!("{}{p}", root.display())));
        let file = root.join("proxy.toml");
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(common::binary::BIN)
            .args(["check", "--config"])
            .arg(&file)
            .env_clear()
            .env("AZURE_TENANT_ID", "00000000-0000-0000-0000-0000000000aa")
            .env("AZURE_CLIENT_ID", "11111111-1111-1111-1111-111111111111")
            .env("AZURE_CLIENT_SECRET", "readme-test-secret")
            .env("AZURE_FEDERATED_TOKEN_FILE", root.join("federated-token"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "README section {heading:?}: check failed\n{stdout}{stderr}\n--- config\n{text}"
        );
        assert!(!stdout.contains("readme-test-secret") && !stderr.contains("readme-test-secret"));
        for line in text.lines() {
            if let Some((_, claim)) = line.split_once("# -> ") {
                assert!(
                    stdout.contains(claim.trim()),
                    "README section {heading:?} says `{}` but check prints:\n{stdout}",
                    claim.trim()
                );
            }
        }
        seen_headings.push(heading);
    }
    // One per context and one per cloud.
    for wanted in [
        "client secret",
        "certificate",
        "workload identity",
        "managed identity",
        "device code",
        "password",
        "Partner context",
        "Commercial (public) cloud",
        "GCC",
        "GCC High",
        "DoD",
        "China",
    ] {
        assert!(
            seen_headings.iter().any(|h| h.contains(wanted)),
            "no whole config under a heading with {wanted:?}: {seen_headings:?}"
        );
    }
}

#[test]
fn the_readme_names_the_toolchain_cargo_toml_asks_for_and_says_windows_is_untested() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let package = manifest["package"].as_table().unwrap();
    let section = readme
        .split("\n## What you need\n")
        .nth(1)
        .expect("a \"What you need\" section")
        .split("\n## ")
        .next()
        .unwrap();
    for needle in [
        format!("Rust {}", package["rust-version"].as_str().unwrap()),
        format!("edition {}", package["edition"].as_str().unwrap()),
        "C compiler".into(),
        "node and npm".into(),
        "python3".into(),
        "GB".into(),
        "cargo install --locked --path .".into(),
        "Windows".into(),
        "**untested**".into(),
    ] {
        assert!(
            section.contains(&needle),
            "\"What you need\" lacks {needle:?}"
        );
    }
}
