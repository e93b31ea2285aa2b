//! Credential kinds beyond client secrets: workload identity federation (the token file is
//! re-read, so Kubernetes' rotation is followed) and the legacy password grant.

mod common;

use std::time::Duration;

use common::{Setup, TestEnv, json, start_edited};
use defender_sandbox::{self as sandbox, SandboxOptions};

const SECRET_LINE: &str = "client_secret = \"sandbox-secret\"";

fn workload_identity(token_file: &std::path::Path) -> impl FnOnce(String) -> String {
    let line = format!("token_file = \"{}\"", token_file.display());
    move |t: String| {
        t.replace("type = \"client_secret\"", "type = \"workload_identity\"")
            .replace(SECRET_LINE, &line)
    }
}

#[tokio::test]
async fn workload_identity_sends_the_token_file_and_follows_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "k8s-token-1\n").unwrap();
    let sandbox = SandboxOptions {
        token_lifetime_secs: 2,
        federated_tokens: vec![(sandbox::DEFAULT_CLIENT_ID.into(), "k8s-token-1".into())],
        ..SandboxOptions::default()
    };
    let env = start_edited(
        Setup {
            sandbox,
            ..Setup::default()
        },
        workload_identity(&file),
    )
    .await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    // Kubernetes rotates the projected token; the identity provider now only accepts the new one.
    std::fs::write(&file, "k8s-token-2\n").unwrap();
    env.sandbox
        .set_federated_token(sandbox::DEFAULT_CLIENT_ID, "k8s-token-2");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        env.get("/api/incidents").await.status(),
        200,
        "the rotated file was read"
    );
    assert!(env.sandbox.token_requests() >= 2);
}

#[tokio::test]
async fn workload_identity_works_for_partner_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "k8s-token").unwrap();
    let sandbox = SandboxOptions {
        federated_tokens: vec![(sandbox::DEFAULT_CLIENT_ID.into(), "k8s-token".into())],
        ..SandboxOptions::default()
    };
    let env = start_edited(
        Setup {
            sandbox,
            ..Setup::default()
        },
        workload_identity(&file),
    )
    .await;
    let resp = env
        .http
        .get(format!("{}/api/incidents?$top=1", env.base))
        .header("x-tenant-id", "contoso")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["value"][0]["tenantId"], sandbox::TENANT_B);
}

#[tokio::test]
async fn an_unrecognised_federated_token_is_rejected_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "not-the-registered-token").unwrap();
    let sandbox = SandboxOptions {
        federated_tokens: vec![(sandbox::DEFAULT_CLIENT_ID.into(), "k8s-token".into())],
        ..SandboxOptions::default()
    };
    let env = start_edited(
        Setup {
            sandbox,
            ..Setup::default()
        },
        workload_identity(&file),
    )
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenRejected"));
    let msg = json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("AADSTS70021") && !msg.contains("not-the-registered-token"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_missing_token_file_is_a_503_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let env = start_edited(
        Setup::default(),
        workload_identity(&dir.path().join("absent")),
    )
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(TestEnv::code(&resp).as_deref(), Some("TokenUnavailable"));
    assert_eq!(env.sandbox.token_requests(), 0);
}

fn password(user: &str, pass: &str, version: u8) -> impl FnOnce(String) -> String {
    let lines = format!("username = \"{user}\"\npassword = \"{pass}\"\ntoken_version = {version}");
    move |t: String| {
        t.replace("type = \"client_secret\"", "type = \"password\"")
            .replace(SECRET_LINE, &lines)
            .replace(
                &format!(
                    "[credentials.app.tenants]\ncontoso = \"{}\"\n",
                    sandbox::TENANT_B
                ),
                "",
            )
    }
}

#[tokio::test]
async fn the_password_grant_works_on_v1_and_v2_and_reports_a_wrong_password() {
    for version in [1, 2] {
        let sandbox = SandboxOptions {
            users: vec![("analyst@contoso.test".into(), "pa$$word".into())],
            ..SandboxOptions::default()
        };
        let env = start_edited(
            Setup {
                sandbox: sandbox.clone(),
                ..Setup::default()
            },
            password("analyst@contoso.test", "pa$$$$word", version),
        )
        .await;
        assert_eq!(env.get("/api/incidents").await.status(), 200, "v{version}");
        let env = start_edited(
            Setup {
                sandbox,
                ..Setup::default()
            },
            password("analyst@contoso.test", "wrong", version),
        )
        .await;
        let resp = env.get("/api/incidents").await;
        assert_eq!(resp.status(), 502);
        let msg = json(resp).await["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("AADSTS50126") && msg.contains("user name or password"),
            "{msg}"
        );
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cert_der(name: &str) -> Vec<u8> {
    defender_proxy::token::certificate::read_certificate_der(&fixture(name)).unwrap()
}

fn certificate(lines: String) -> impl FnOnce(String) -> String {
    move |t: String| {
        t.replace("type = \"client_secret\"", "type = \"client_certificate\"")
            .replace(SECRET_LINE, &lines)
    }
}

fn with_cert(cert: &str) -> SandboxOptions {
    SandboxOptions {
        certificates: vec![(sandbox::DEFAULT_CLIENT_ID.into(), cert_der(cert))],
        ..SandboxOptions::default()
    }
}

#[tokio::test]
async fn a_certificate_from_pem_or_pfx_signs_an_assertion_the_provider_accepts() {
    for lines in [
        format!(
            "certificate = \"{}\"",
            fixture("test-only-combined1.pem").display()
        ),
        format!(
            "certificate = \"{}\"\nprivate_key = \"{}\"",
            fixture("test-only-cert1.pem").display(),
            fixture("test-only-key1.pem").display()
        ),
        format!(
            "certificate = \"{}\"\ncertificate_password = \"test-pfx-password\"",
            fixture("test-only1.pfx").display()
        ),
        // As Windows and `openssl pkcs12 -export -legacy` write it: RC2-40 and 3DES.
        format!(
            "certificate = \"{}\"\ncertificate_password = \"test-pfx-password\"",
            fixture("test-only1-legacy.pfx").display()
        ),
        format!(
            "certificate = \"{}\"\nassertion_alg = \"RS256\"\nsend_certificate_chain = true",
            fixture("test-only-combined1.pem").display()
        ),
    ] {
        let env = start_edited(
            Setup {
                sandbox: with_cert("test-only-cert1.pem"),
                ..Setup::default()
            },
            certificate(lines.clone()),
        )
        .await;
        assert_eq!(env.get("/api/incidents").await.status(), 200, "{lines}");
        let resp = env
            .http
            .get(format!("{}/api/incidents?$top=1", env.base))
            .header("x-tenant-id", "contoso")
            .send()
            .await
            .unwrap();
        assert_eq!(
            json(resp).await["value"][0]["tenantId"],
            sandbox::TENANT_B,
            "partner tenant with {lines}"
        );
    }
}

#[tokio::test]
async fn an_unregistered_certificate_is_rejected_with_its_code() {
    let lines = format!(
        "certificate = \"{}\"",
        fixture("test-only-combined1.pem").display()
    );
    let env = start_edited(
        Setup {
            sandbox: with_cert("test-only-cert2.pem"),
            ..Setup::default()
        },
        certificate(lines),
    )
    .await;
    let resp = env.get("/api/incidents").await;
    assert_eq!(resp.status(), 502);
    let msg = json(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("AADSTS700027"), "{msg}");
}

#[tokio::test]
async fn a_rotated_certificate_file_is_used_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::copy(fixture("test-only-combined1.pem"), &path).unwrap();
    let sandbox = SandboxOptions {
        token_lifetime_secs: 2,
        ..with_cert("test-only-cert1.pem")
    };
    let env = start_edited(
        Setup {
            sandbox,
            ..Setup::default()
        },
        certificate(format!("certificate = \"{}\"", path.display())),
    )
    .await;
    assert_eq!(env.get("/api/incidents").await.status(), 200);
    let two = std::fs::read_to_string(fixture("test-only-cert2.pem")).unwrap()
        + &std::fs::read_to_string(fixture("test-only-key2.pem")).unwrap();
    std::fs::write(&path, two).unwrap();
    env.sandbox.set_certificates(
        sandbox::DEFAULT_CLIENT_ID,
        vec![cert_der("test-only-cert2.pem")],
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        env.get("/api/incidents").await.status(),
        200,
        "the new certificate signed the next assertion"
    );
}
