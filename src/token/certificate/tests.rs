//! Tests of certificate loading and client assertions, with the test-only key material in
//! `tests/fixtures` (generated with openssl for these tests; never a real credential).

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn files(cert: &str, key: Option<&str>, password: Option<&str>) -> CertificateFiles {
    CertificateFiles {
        certificate: fixture(cert),
        private_key: key.map(fixture),
        password: password.map(Secret::new),
    }
}

fn decode(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn verify(
    m: &KeyMaterial,
    jwt: &str,
    alg: &dyn rustls::pki_types::SignatureVerificationAlgorithm,
) -> bool {
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let cert = webpki::EndEntityCert::try_from(&m.chain[0]).unwrap();
    cert.verify_signature(alg, input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .is_ok()
}

#[test]
fn pem_in_one_file_two_files_pkcs1_and_pfx_all_load() {
    for f in [
        files("test-only-combined1.pem", None, None),
        files("test-only-cert1.pem", Some("test-only-key1.pem"), None),
        files(
            "test-only-cert1.pem",
            Some("test-only-key1-pkcs1.pem"),
            None,
        ),
        files("test-only1.pfx", None, Some("test-pfx-password")),
    ] {
        let m = f.load().unwrap_or_else(|e| panic!("{f:?}: {e}"));
        assert_eq!(m.chain.len(), 1);
    }
}

#[test]
fn bad_files_give_clear_errors() {
    let e = files("test-only1.pfx", None, Some("wrong"))
        .load()
        .unwrap_err();
    assert!(e.contains("wrong password"), "{e}");
    let e = files("test-only-cert1.pem", None, None).load().unwrap_err();
    assert!(e.contains("no private key"), "{e}");
    let e = files("missing.pem", None, None).load().unwrap_err();
    assert!(e.contains("missing.pem"), "{e}");
    let e = files("test-only-cert1.pem", Some("test-only-key2.pem"), None)
        .load()
        .unwrap_err();
    assert!(e.contains("does not belong to the private key"), "{e}");
    files("test-only-cert2.pem", Some("test-only-key2.pem"), None)
        .load()
        .expect("the matching pair loads");
}

#[test]
fn ps256_assertions_carry_the_sha256_thumbprint_and_verify() {
    let m = files("test-only-combined1.pem", None, None).load().unwrap();
    let jwt = assertion(
        &m,
        "client-1",
        "https://login.example/t/oauth2/v2.0/token",
        AssertionAlg::Ps256,
        false,
    )
    .unwrap();
    let parts: Vec<&str> = jwt.expose().split('.').collect();
    let (head, claims) = (decode(parts[0]), decode(parts[1]));
    assert_eq!(head["alg"], "PS256");
    assert_eq!(head["x5t#S256"], thumbprint_sha256(m.chain[0].as_ref()));
    assert!(head.get("x5c").is_none() && head.get("x5t").is_none());
    assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
    assert_eq!(
        (claims["iss"].as_str(), claims["sub"].as_str()),
        (Some("client-1"), Some("client-1"))
    );
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > nbf && exp - nbf <= 600);
    assert_eq!(claims["iat"], claims["nbf"]);
    assert!(verify(
        &m,
        jwt.expose(),
        webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY
    ));
    let again = assertion(&m, "client-1", "aud", AssertionAlg::Ps256, false).unwrap();
    assert_ne!(
        decode(again.expose().split('.').nth(1).unwrap())["jti"],
        claims["jti"],
        "jti is unique"
    );
}

#[test]
fn rs256_uses_x5t_and_the_chain_can_be_sent() {
    let m = files("test-only1.pfx", None, Some("test-pfx-password"))
        .load()
        .unwrap();
    let jwt = assertion(&m, "c", "aud", AssertionAlg::Rs256, true).unwrap();
    let head = decode(jwt.expose().split('.').next().unwrap());
    assert_eq!(head["alg"], "RS256");
    assert_eq!(head["x5t"], thumbprint_sha1(m.chain[0].as_ref()));
    assert_eq!(head["x5c"][0], STANDARD.encode(m.chain[0].as_ref()));
    assert!(verify(
        &m,
        jwt.expose(),
        webpki::ring::RSA_PKCS1_2048_8192_SHA256
    ));
}

#[test]
fn a_replaced_certificate_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::copy(fixture("test-only-combined1.pem"), &path).unwrap();
    let endpoint = TokenEndpoint::new("https://login.example", 2, None);
    let files = CertificateFiles {
        certificate: path.clone(),
        private_key: None,
        password: None,
    };
    let cc =
        ClientCertificate::new("c".into(), files, AssertionAlg::Ps256, false, endpoint).unwrap();
    let first = cc.material().unwrap();
    assert!(
        Arc::ptr_eq(&first, &cc.material().unwrap()),
        "unchanged files are not read again"
    );
    let two = std::fs::read_to_string(fixture("test-only-cert2.pem")).unwrap()
        + &std::fs::read_to_string(fixture("test-only-key2.pem")).unwrap();
    std::fs::write(&path, two).unwrap();
    let second = cc.material().unwrap();
    assert_ne!(first.chain[0].as_ref(), second.chain[0].as_ref());
}

#[test]
fn debug_output_shows_no_key_material() {
    let m = files("test-only-combined1.pem", None, None).load().unwrap();
    assert!(format!("{m:?}").contains("***"));
    let files = files("test-only1.pfx", None, Some("test-pfx-password"));
    assert!(!format!("{files:?}").contains("test-pfx-password"));
}
