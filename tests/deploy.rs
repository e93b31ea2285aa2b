//! The files that install and deploy the proxy: the systemd unit passes `systemd-analyze
//! verify` and its offline security check, the systemd and container configs keep the shipped
//! routes and rate limits and read their secrets where the unit and the README put them, and
//! the container's build context leaves `target/` out.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::BIN;
use defender_proxy::config::Config;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `systemd-analyze`, from Debian's `systemd` package, installed with apt-get when missing: this
/// test never skips.
fn systemd_analyze() -> &'static str {
    let present = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !present("systemd-analyze") {
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq --no-install-recommends systemd",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed && present("systemd-analyze"),
            "systemd-analyze is missing and `apt-get install systemd` failed: install Debian's \
             systemd package to run this test"
        );
    }
    "systemd-analyze"
}

/// The unit with `ExecStart=` pointing at the binary under test (`verify` checks that the
/// program exists and is executable).
fn unit_under_test(dir: &Path) -> PathBuf {
    let unit = read("deploy/systemd/defender-proxy.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/defender-proxy run"));
    let path = dir.join("defender-proxy.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/defender-proxy", BIN)).unwrap();
    path
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_and_its_security_check() {
    let analyze = systemd_analyze();
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // `verify` only warns (exit 0) about unknown keys and bad values: any output is a finding.
    assert!(err.trim().is_empty(), "systemd-analyze verify: {err}");
    // The exposure score is 0 (locked down) to 10 (unprotected); the threshold is in tenths.
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_systemd_unit_has_a_dynamic_user_a_loaded_credential_reload_and_a_sandbox() {
    let unit = read("deploy/systemd/defender-proxy.service");
    for line in [
        "DynamicUser=yes",
        "LoadCredential=client-secret:/etc/defender-proxy/client-secret",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=",
        "RestartPreventExitStatus=64",
        "ExecStart=/usr/local/bin/defender-proxy run --config /etc/defender-proxy/proxy.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
}

#[test]
fn the_systemd_config_reads_the_secret_systemd_loads() {
    let config = read("deploy/systemd/proxy.toml");
    assert!(config.contains("client_secret_file = \"${CREDENTIALS_DIRECTORY}/client-secret\""));
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(
        credentials.path().join("client-secret"),
        "systemd-test-secret\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(repo("deploy/systemd/proxy.toml"))
        .env_clear()
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .env("AZURE_TENANT_ID", "00000000-0000-0000-0000-0000000000aa")
        .env("AZURE_CLIENT_ID", "11111111-1111-1111-1111-111111111111")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("secret=*** (file)"), "{stdout}");
    assert!(!stdout.contains("systemd-test-secret") && !stderr.contains("systemd-test-secret"));
}

/// A config's routes and rate limits, as text to compare.
fn routes_and_limits(config: &Config) -> String {
    format!("{:#?}\n{:#?}", config.routes, config.rate_limit)
}

fn load(text: &str, files: &Path) -> Config {
    let env = |name: &str| match name {
        "AZURE_TENANT_ID" => Some("00000000-0000-0000-0000-0000000000aa".to_string()),
        "AZURE_CLIENT_ID" => Some("11111111-1111-1111-1111-111111111111".to_string()),
        "AZURE_CLIENT_SECRET" => Some("s".to_string()),
        "CREDENTIALS_DIRECTORY" => Some(files.display().to_string()),
        _ => None,
    };
    let text = text.replace("/run/secrets/", &format!("{}/", files.display()));
    Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_systemd_and_container_configs_keep_the_shipped_routes_and_rate_limits() {
    let files = tempfile::tempdir().unwrap();
    let shipped = load(&read("proxy.toml"), files.path());
    assert!(shipped.rate_limit.len() >= 5);
    for rel in ["deploy/systemd/proxy.toml", "deploy/container/proxy.toml"] {
        let config = load(&read(rel), files.path());
        assert_eq!(
            routes_and_limits(&config),
            routes_and_limits(&shipped),
            "{rel} differs from proxy.toml"
        );
    }
}

#[test]
fn the_container_config_listens_on_every_address_with_the_inbound_key_from_a_file() {
    let files = tempfile::tempdir().unwrap();
    let config = load(&read("deploy/container/proxy.toml"), files.path());
    assert_eq!(config.server.listen, "0.0.0.0:8080");
    assert!(config.server.allow_remote);
    assert_eq!(
        config.server.inbound_key_file,
        Some(files.path().join("defender-proxy-key"))
    );
    // The image carries it where its CMD looks.
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|l| l == "COPY deploy/container/proxy.toml /etc/defender-proxy/proxy.toml"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains(r#"CMD ["run", "--config", "/etc/defender-proxy/proxy.toml"]"#));
}

/// The README's container commands, joined where a line ends with `\`.
fn readme_container_commands() -> Vec<String> {
    let readme = read("README.md");
    let section = readme
        .split("\n## Container\n")
        .nth(1)
        .expect("a Container section")
        .split("\n## ")
        .next()
        .unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| {
            l.split(" #")
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_readme_docker_run_line_fits_the_container_config() {
    let commands = readme_container_commands();
    let run = commands
        .iter()
        .find(|c| c.starts_with("docker run "))
        .unwrap_or_else(|| panic!("no docker run in {commands:?}"));
    let build = commands
        .iter()
        .find(|c| c.starts_with("docker build "))
        .unwrap_or_else(|| panic!("no docker build in {commands:?}"));
    let tag = build
        .split_whitespace()
        .skip_while(|w| *w != "-t")
        .nth(1)
        .unwrap();
    assert!(
        run.ends_with(&format!(" {tag}")),
        "{run} does not run {tag}"
    );
    // The key file goes where the config reads it, and the variables it reads are passed.
    let text = read("deploy/container/proxy.toml");
    assert!(text.contains("inbound_key_file = \"/run/secrets/defender-proxy-key\""));
    assert!(run.contains(":/run/secrets/defender-proxy-key:ro"), "{run}");
    for var in ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"] {
        assert!(text.contains(&format!("${{{var}}}")), "{var}");
        assert!(
            run.contains(&format!("-e {var}")),
            "{run} does not pass {var}"
        );
    }
    assert!(
        !run.contains("DEFENDER_PROXY_KEY"),
        "the key comes from a file: {run}"
    );
    assert!(run.contains("-p 127.0.0.1:8080:8080"), "{run}");
    // A client sends the key from the same file.
    assert!(
        commands.iter().any(|c| c.starts_with("curl ")
            && c.contains("x-defender-proxy-key: $(cat defender-proxy-key)")),
        "{commands:?}"
    );
}

#[test]
fn the_build_context_is_only_what_the_dockerfile_copies() {
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), "everything is left out first");
    let admitted: Vec<&str> = rules.iter().filter_map(|r| r.strip_prefix('!')).collect();
    assert!(!admitted.iter().any(|a| a.starts_with("target")));
    for line in read("Dockerfile").lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                admitted.iter().any(|a| a.trim_end_matches('/') == source),
                ".dockerignore leaves out {source}, which the Dockerfile copies"
            );
        }
    }
}

#[test]
fn ci_installs_systemd_analyze_when_missing() {
    let ci = read(".ci/run");
    assert!(
        ci.contains("command -v systemd-analyze")
            && ci.contains("apt-get install -y -qq --no-install-recommends systemd"),
        "{ci}"
    );
    let syntax = Command::new("bash")
        .args(["-n"])
        .arg(repo(".ci/run"))
        .status()
        .unwrap();
    assert!(syntax.success());
}

#[test]
fn the_readme_install_steps_match_the_unit() {
    let readme = read("README.md");
    let unit = read("deploy/systemd/defender-proxy.service");
    for step in [
        "cargo install --locked --path . --root /usr/local",
        "install -m 0644 deploy/systemd/proxy.toml /etc/defender-proxy/proxy.toml",
        "install -m 0600 /dev/stdin /etc/defender-proxy/client-secret",
        "install -m 0644 deploy/systemd/defender-proxy.service /etc/systemd/system/",
        "systemctl enable --now defender-proxy",
    ] {
        assert!(readme.contains(step), "README lacks {step:?}");
        assert!(unit.contains(step), "the unit's comment lacks {step:?}");
    }
}
