//! The Kubernetes manifests parse, carry what a sidecar needs, and agree with the proxy
//! config they ship: the probes hit the admin port the config listens on, the config is
//! valid with the shipped routes and rate limits, and every file it names is under a mounted
//! volume. They create no Secret (the README's `kubectl create secret` does) and say which
//! image to build and push.

use std::path::Path;

use defender_proxy::config::Config;
use serde_norway::Value;

fn documents(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn manifest_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

fn proxy_config(docs: &[Value]) -> Config {
    let cm = kind(docs, "ConfigMap");
    let text = str_of(&cm["data"]["proxy.toml"]);
    let env = |k: &str| match k {
        "AZURE_TENANT_ID" => Some("00000000-0000-0000-0000-000000000000".to_string()),
        "AZURE_CLIENT_ID" => Some("00000000-0000-0000-0000-000000000001".to_string()),
        "AZURE_FEDERATED_TOKEN_FILE" => {
            Some("/var/run/secrets/azure/tokens/azure-identity-token".to_string())
        }
        _ => None,
    };
    Config::parse(text, &env)
        .unwrap()
        .validated(&env)
        .unwrap_or_else(|e| panic!("the shipped config is invalid: {e}"))
}

#[test]
fn every_manifest_has_a_native_sidecar_with_probes_on_the_configured_admin_port() {
    for file in manifest_files() {
        let docs = documents(&file);
        let config = proxy_config(&docs);
        let admin_port: u16 = config
            .server
            .admin_listen
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            config.server.listen.starts_with("127.0.0.1:")
                || config.server.listen.starts_with("unix:/"),
            "{file}: the proxy stays on the pod's loopback or a socket"
        );
        let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
        let sidecar = pod["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "defender-proxy")
            .unwrap();
        assert_eq!(
            sidecar["restartPolicy"], "Always",
            "{file}: a native sidecar starts before the app"
        );
        let ports = sidecar["ports"].as_sequence().unwrap();
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get = &sidecar[probe]["httpGet"];
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64().unwrap() as u16,
                Value::String(name) => {
                    let p = ports
                        .iter()
                        .find(|p| p["name"] == name.as_str())
                        .unwrap_or_else(|| panic!("{file}: no port {name}"));
                    p["containerPort"].as_u64().unwrap() as u16
                }
                other => panic!("{file}: bad port {other:?}"),
            };
            assert_eq!(
                port, admin_port,
                "{file}: {probe} must hit the admin listener"
            );
        }
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(
            sidecar["securityContext"]["runAsUser"].as_u64(),
            Some(65532)
        );
        assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
        let app = &pod["containers"][0];
        let env = app["env"].as_sequence().unwrap();
        match config.server.listen.strip_prefix("unix:") {
            Some(socket) => check_socket_is_shared(&file, socket, sidecar, app),
            None => assert!(
                env.iter().any(|e| str_of(&e["value"])
                    .starts_with(&format!("http://{}", config.server.listen))),
                "{file}: the app is pointed at the proxy"
            ),
        }
        check_files_are_mounted(&file, &config, sidecar);
        check_workload_identity(&file, &config, &docs, pod);
        check_shared_store(&file, &config, &docs, pod);
    }
}

/// A Unix socket listener: the socket's folder is one volume, writable in the sidecar and
/// mounted in the app, whose environment names the socket.
fn check_socket_is_shared(file: &str, socket: &str, sidecar: &Value, app: &Value) {
    let folder = Path::new(socket).parent().unwrap().to_str().unwrap();
    let volume_at = |c: &Value| {
        c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| str_of(&m["mountPath"]) == folder && m["readOnly"] != true)
            .map(|m| str_of(&m["name"]).to_string())
    };
    let shared = volume_at(sidecar);
    assert!(
        shared.is_some(),
        "{file}: the sidecar cannot write {folder}"
    );
    assert_eq!(
        volume_at(app),
        shared,
        "{file}: the app does not mount {folder}"
    );
    let env = app["env"].as_sequence().unwrap();
    assert!(
        env.iter().any(|e| str_of(&e["value"]) == socket),
        "{file}: the app is not pointed at {socket}"
    );
}

/// A workload identity credential needs the pod label and an annotated service account.
fn check_workload_identity(file: &str, config: &Config, docs: &[Value], pod: &Value) {
    use defender_proxy::config::CredentialType;
    if !config
        .credentials
        .values()
        .any(|c| c.kind == CredentialType::WorkloadIdentity)
    {
        return;
    }
    let labels = &kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        labels["azure.workload.identity/use"], "true",
        "{file}: the webhook only mutates labelled pods"
    );
    let account = kind(docs, "ServiceAccount");
    assert_eq!(
        pod["serviceAccountName"], account["metadata"]["name"],
        "{file}"
    );
    assert!(
        account["metadata"]["annotations"]["azure.workload.identity/client-id"]
            .as_str()
            .is_some(),
        "{file}"
    );
}

/// A Redis store: its host is a Service of the manifest, its password a file from a Secret
/// volume, and that Secret is made with `kubectl create secret`, not shipped as a placeholder.
fn check_shared_store(file: &str, config: &Config, docs: &[Value], pod: &Value) {
    use defender_proxy::config::StoreType;
    let store = &config.rate_limit_store;
    if store.kind != StoreType::Redis {
        return;
    }
    let url = store.url.as_deref().unwrap();
    let host = url
        .split("://")
        .nth(1)
        .unwrap()
        .split([':', '/'])
        .next()
        .unwrap();
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Service" && d["metadata"]["name"] == host),
        "{file}: no Service named {host}"
    );
    assert!(
        store.password.is_none(),
        "{file}: the password comes from a file"
    );
    let password = store.password_file.as_ref().unwrap().display().to_string();
    let sidecar = pod["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "defender-proxy")
        .unwrap();
    let mount = sidecar["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| password.starts_with(str_of(&m["mountPath"])))
        .unwrap();
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret = str_of(&volume["secret"]["secretName"]);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret),
        "{file}: Secret {secret} is a placeholder in the manifest"
    );
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes")
            .join(file),
    )
    .unwrap();
    assert!(
        text.contains(&format!("kubectl create secret generic {secret}")),
        "{file}: say how to create Secret {secret}"
    );
}

fn check_files_are_mounted(file: &str, config: &Config, sidecar: &Value) {
    let mounts: Vec<(&str, bool)> = sidecar["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (str_of(&m["mountPath"]), m["readOnly"] == true))
        .collect();
    let config_arg = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .skip_while(|a| *a != "--config")
        .nth(1)
        .unwrap();
    let mut files: Vec<String> = config
        .referenced_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    files.push(config_arg.to_string());
    for f in files {
        let mount = mounts
            .iter()
            .find(|(m, _)| f.starts_with(m))
            .unwrap_or_else(|| panic!("{file}: {f} is not under a volume mount"));
        assert!(mount.1, "{file}: {} should be mounted read-only", mount.0);
    }
}

fn manifest_text(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes")
            .join(file),
    )
    .unwrap()
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

#[test]
fn every_manifest_keeps_the_shipped_routes_and_rate_limits() {
    let shipped_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml")).unwrap();
    let env = |k: &str| match k {
        "AZURE_TENANT_ID" => Some("00000000-0000-0000-0000-000000000000".to_string()),
        "AZURE_CLIENT_ID" | "AZURE_CLIENT_SECRET" => Some("c".to_string()),
        _ => None,
    };
    let shipped = Config::from_toml(&shipped_text, &env).unwrap();
    let shown = |c: &Config| format!("{:#?}\n{:#?}", c.routes, c.rate_limit);
    for file in manifest_files() {
        let config = proxy_config(&documents(&file));
        assert!(!config.rate_limit.is_empty(), "{file}: no rate limits");
        assert_eq!(
            shown(&config),
            shown(&shipped),
            "{file}: not the shipped routes and limits"
        );
    }
}

#[test]
fn no_manifest_creates_a_secret_and_the_readme_shows_how_to_create_each_one_used() {
    for file in manifest_files() {
        let docs = documents(&file);
        assert!(
            !docs.iter().any(|d| d["kind"] == "Secret"),
            "{file}: a Secret with a placeholder value would be applied as is"
        );
        let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_sequence().unwrap();
        for name in volumes
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
        {
            let create = format!("kubectl create secret generic {name} ");
            assert!(readme().contains(&create), "README: no `{create}...`");
            assert!(
                manifest_text(&file).contains(&create),
                "{file}: no `{create}...`"
            );
        }
    }
}

/// Issue 22: the catch-all route had no quota, so a burst through it met the upstream's 429s.
#[test]
fn every_route_of_every_manifest_has_a_documented_quota() {
    for file in manifest_files() {
        let config = proxy_config(&documents(&file));
        for route in &config.routes {
            let limit = route
                .rate_limit
                .as_ref()
                .unwrap_or_else(|| panic!("{file}: route {} has no rate_limit", route.name));
            let l = &config.rate_limit[limit];
            assert!(l.per_minute.is_some(), "{file}: {limit}");
            assert!(
                l.max_wait_secs() >= 60,
                "{file}: {limit} cannot queue a burst"
            );
        }
    }
}

#[test]
fn every_manifest_says_which_image_to_build_and_push() {
    for file in manifest_files() {
        let docs = documents(&file);
        let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
        let sidecar = pod["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "defender-proxy")
            .unwrap();
        let image = str_of(&sidecar["image"]);
        for step in [
            format!("docker build -t {image} ."),
            format!("docker push {image}"),
        ] {
            assert!(manifest_text(&file).contains(&step), "{file}: no `{step}`");
            assert!(readme().contains(&step), "README: no `{step}`");
        }
    }
}
