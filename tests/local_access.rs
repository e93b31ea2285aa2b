//! Who may call what on the local side, each rule exercised by a real client process (curl,
//! Python): per-route methods, named clients with their own keys, a Unix socket whose mode
//! decides who may connect, and the caller's identity in the access log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::binary::{BIN, write_config};
use common::{Setup, start_edited};
use defender_sandbox::Sandbox;

/// Runs curl with `args`; gives its output (the status code is printed last by `-w`).
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl runs")
}

fn status(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_method_is_answered_405_and_never_reaches_the_upstream() {
    let env = start_edited(Setup::default(), |text| {
        text.replace("name = \"mde\"\n", "name = \"mde\"\nmethods = [\"GET\"]\n")
    })
    .await;
    let url = format!("{}/mde/api/machines/1/isolate", env.base);
    let before = env.sandbox.api_requests();
    for method in ["POST", "DELETE", "PATCH"] {
        let out = curl(&["-X", method, "-D", "/dev/stdout", &url, "-d", "{}"]);
        let text = status(&out);
        assert!(text.ends_with("405"), "{method}: {text}");
        assert!(text.to_ascii_lowercase().contains("allow: get"), "{text}");
        assert!(
            text.contains("x-defender-proxy-error: MethodNotAllowed"),
            "{text}"
        );
    }
    assert_eq!(
        env.sandbox.api_requests(),
        before,
        "a refused method went upstream"
    );
    let out = curl(&[&format!("{}/mde/api/machines", env.base)]);
    assert_eq!(status(&out), "200");
    let out = curl(&["-I", &format!("{}/mde/api/machines", env.base)]);
    assert!(status(&out).ends_with("200"), "HEAD goes with GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_limited_to_one_route_is_refused_on_another() {
    let env = start_edited(Setup::default(), |text| {
        format!(
            "{text}\n[clients.reports]\nkey = \"reports-key\"\nroutes = [\"mde\"]\nmethods = [\"GET\"]\n\
             [clients.responder]\nkey = \"responder-key\"\n"
        )
    })
    .await;
    let key = |k: &str| format!("x-defender-proxy-key: {k}");
    let mde = format!("{}/mde/api/machines", env.base);
    let xdr = format!("{}/api/incidents", env.base);
    assert_eq!(status(&curl(&["-H", &key("reports-key"), &mde])), "200");
    let out = curl(&["-D", "/dev/stdout", "-H", &key("reports-key"), &xdr]);
    assert!(status(&out).ends_with("403"), "{}", status(&out));
    assert!(status(&out).contains("ClientNotAllowed"));
    let out = curl(&["-X", "POST", "-H", &key("reports-key"), &mde, "-d", "{}"]);
    assert_eq!(status(&out), "403", "a method the client was not granted");
    assert_eq!(status(&curl(&["-H", &key("responder-key"), &xdr])), "200");
    assert_eq!(status(&curl(&[&xdr])), "401", "no key");
    assert_eq!(status(&curl(&["-H", &key("reports-keyX"), &xdr])), "401");
}

/// Starts the binary on `socket`; waits for the socket to appear.
async fn start_on_socket(config: &Path, socket: &Path) -> std::process::Child {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "the proxy did not listen on {}:\n{}",
        socket.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stop(child: std::process::Child) -> String {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_its_owner_and_no_other_user() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(listener, Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The folder is open to all: only the socket's own mode keeps other users out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket: PathBuf = dir.path().join("proxy.sock");
    // A stale socket, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let text = common::config_text(&sandbox.url(), &Setup::default())
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!(
                "listen = \"unix:{}\"\nsocket_mode = \"0600\"",
                socket.display()
            ),
        )
        + "\n[log]\naccess_log = false\n";
    let config = write_config(dir.path(), &text);
    let child = start_on_socket(&config, &socket).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sock = socket.to_str().unwrap();
    let out = curl(&["--unix-socket", sock, "http://localhost/api/incidents"]);
    assert_eq!(
        status(&out),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = "import httpx, sys\n\
        t = httpx.HTTPTransport(uds=sys.argv[1])\n\
        with httpx.Client(transport=t) as c:\n\
        \x20   r = c.get('http://localhost/api/incidents')\n\
        \x20   assert r.status_code == 200, r.status_code\n\
        \x20   assert r.json()['value'], 'no incidents'\n\
        \x20   r = c.post('http://localhost/api/advancedhunting/run', json={'Query': 'DeviceInfo | take 1'})\n\
        \x20   print(r.status_code)\n";
    let py = Command::new("python3")
        .args(["-c", script, sock])
        .env(
            "PYTHONPATH",
            common::python::python_path_for("httpx", "httpx", "target/python-httpx"),
        )
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    // Another local user: the socket's mode refuses the connection.
    let before = sandbox.api_requests();
    let other = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
        ])
        .args(["--unix-socket", sock, "http://localhost/api/incidents"])
        .output()
        .expect("setpriv runs (the tests run as root)");
    assert!(!other.status.success(), "another user got through");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("onnect"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert_eq!(sandbox.api_requests(), before);
    let logs = stop(child);
    assert!(!socket.exists(), "the socket is removed at shutdown");
    // The access log is off, but the write (the hunting POST) is logged with its caller.
    let post = logs
        .lines()
        .find(|l| l.contains("method=POST"))
        .unwrap_or_else(|| panic!("no line for the POST in:\n{logs}"));
    assert!(post.contains("peer_uid=0"), "{post}");
    assert!(post.contains("peer_pid="), "{post}");
    assert!(!logs.lines().any(|l| l.contains("method=GET")), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_tcp_caller_is_named_by_its_user_in_the_access_log() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(listener, Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(&sandbox.url(), &Setup::default());
    let proxy = common::binary::Proxy::start(&text, dir.path(), "info").await;
    let out = curl(&[&format!("{}/api/incidents", proxy.base)]);
    assert_eq!(status(&out), "200");
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let (_, logs) = proxy.terminate();
    let line = logs
        .lines()
        .find(|l| l.contains("path=\"/api/incidents\""))
        .unwrap_or_else(|| panic!("no access line in:\n{logs}"));
    assert!(line.contains(&format!("peer_uid={uid}")), "{line}");
}

#[test]
fn check_shows_the_methods_and_clients_but_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text("http://127.0.0.1:1", &Setup::default())
        .replace("name = \"mde\"\n", "name = \"mde\"\nmethods = [\"GET\"]\n")
        + "\n[clients.reports]\nkey = \"reports-key-9f2\"\nroutes = [\"mde\"]\nmethods = [\"GET\"]\n";
    let config = write_config(dir.path(), &text);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("route=mde") && stdout.contains("methods=GET"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reports      key=*** (config/env)  routes: mde  methods: GET"),
        "{stdout}"
    );
    assert!(!stdout.contains("reports-key-9f2"), "{stdout}");
}
