//! Client credentials with a certificate (`type = "client_certificate"`): the key and chain come
//! from PEM (one file or two) or PKCS#12; a client-assertion JWT signed with the key is sent
//! instead of a secret. A changed certificate file is read again at the next fetch, so rotation
//! needs no restart. Key material never appears in `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::workload_identity::request_with_assertion;
use super::{EntraClient, Token, TokenEndpoint, TokenError};
use crate::secret::Secret;

/// How long an assertion is valid (Entra accepts at most 10 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// The assertion's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    /// RSASSA-PSS with SHA-256 and the `x5t#S256` thumbprint (the default).
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and the SHA-1 `x5t` thumbprint (older setups).
    Rs256,
}

/// Where the certificate and key are.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// PEM (certificate, maybe with its key) or PKCS#12 (`.pfx`, `.p12`).
    pub certificate: PathBuf,
    /// A separate PEM key.
    pub private_key: Option<PathBuf>,
    /// The PKCS#12 password.
    pub password: Option<Secret>,
}

/// A parsed key and its chain.
pub struct KeyMaterial {
    key: RsaKeyPair,
    /// Leaf first.
    chain: Vec<CertificateDer<'static>>,
    stamp: Vec<Option<(SystemTime, u64)>>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("key", &"***")
            .field("certificates", &self.chain.len())
            .finish()
    }
}

impl CertificateFiles {
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        std::iter::once(&self.certificate)
            .chain(self.private_key.iter())
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }

    fn is_pkcs12(&self) -> bool {
        let ext = self
            .certificate
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        ext == "pfx" || ext == "p12"
    }

    /// Reads and checks the key material.
    pub fn load(&self) -> Result<KeyMaterial, String> {
        let stamp = self.stamp();
        let (key_der, chain) = if self.is_pkcs12() {
            self.read_pkcs12()?
        } else {
            self.read_pem()?
        };
        let key = match &key_der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err("only RSA keys are supported".into()),
        }
        .map_err(|e| format!("the private key is not a usable RSA key: {e}"))?;
        if chain.is_empty() {
            return Err(format!(
                "{}: no certificate found",
                self.certificate.display()
            ));
        }
        // The leaf certificate's SubjectPublicKeyInfo holds the key's RSAPublicKey DER verbatim;
        // a certificate of another key cannot contain this modulus.
        let public = ring::signature::KeyPair::public_key(&key).as_ref();
        if !chain[0].windows(public.len()).any(|w| w == public) {
            return Err(format!(
                "{}: the certificate does not belong to the private key",
                self.certificate.display()
            ));
        }
        Ok(KeyMaterial { key, chain, stamp })
    }

    fn read_pem(&self) -> Result<(PrivateKeyDer<'static>, Vec<CertificateDer<'static>>), String> {
        let chain = crate::tls::read_pem_certs(&self.certificate)?;
        let key_file = self.private_key.as_deref().unwrap_or(&self.certificate);
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| format!("{}: no private key ({e})", key_file.display()))?;
        Ok((key, chain))
    }

    fn read_pkcs12(
        &self,
    ) -> Result<(PrivateKeyDer<'static>, Vec<CertificateDer<'static>>), String> {
        let path = &self.certificate;
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let password = self.password.as_ref().map_or("", |p| p.expose());
        let store = p12_keystore::KeyStore::from_pkcs12(&data, password).map_err(|_| {
            format!(
                "{}: cannot open (wrong password or not PKCS#12)",
                path.display()
            )
        })?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| format!("{}: no private key", path.display()))?;
        let key = PrivateKeyDer::Pkcs8(chain.key().to_vec().into());
        let certs = chain
            .chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect();
        Ok((key, certs))
    }
}

impl KeyMaterial {
    /// The leaf certificate's DER: the one registered on the app (the demo registers it in the
    /// sandbox).
    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }
}

/// An app registration authenticating with a certificate.
pub struct ClientCertificate {
    /// Application (client) ID.
    pub client_id: String,
    /// Where the key material is.
    pub files: CertificateFiles,
    /// Signature algorithm.
    pub alg: AssertionAlg,
    /// Send the chain as `x5c`.
    pub send_chain: bool,
    /// Where to ask.
    pub endpoint: TokenEndpoint,
    material: Mutex<Option<Arc<KeyMaterial>>>,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("client_id", &self.client_id)
            .field("files", &self.files)
            .finish()
    }
}

impl ClientCertificate {
    /// A credential whose key material was read once (to fail early on a bad file).
    pub fn new(
        client_id: String,
        files: CertificateFiles,
        alg: AssertionAlg,
        send_chain: bool,
        endpoint: TokenEndpoint,
    ) -> Result<Self, String> {
        let material = files.load()?;
        Ok(ClientCertificate {
            client_id,
            files,
            alg,
            send_chain,
            endpoint,
            material: Mutex::new(Some(Arc::new(material))),
        })
    }

    /// The key material, read again when a file changed since.
    fn material(&self) -> Result<Arc<KeyMaterial>, TokenError> {
        let mut slot = self.material.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = slot.as_ref().filter(|m| m.stamp == self.files.stamp()) {
            return Ok(m.clone());
        }
        let fresh = Arc::new(
            self.files
                .load()
                .map_err(|reason| TokenError::Unavailable {
                    reason,
                    retry_after: None,
                })?,
        );
        tracing::info!(certificate = %self.files.certificate.display(), "certificate (re)loaded");
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// One token for `tenant` and `scope`.
    pub async fn fetch(
        &self,
        entra: &EntraClient,
        tenant: &str,
        scope: &str,
    ) -> Result<Token, TokenError> {
        let url = self.endpoint.url(tenant);
        let material = self.material()?;
        let assertion = assertion(&material, &self.client_id, &url, self.alg, self.send_chain)
            .map_err(|reason| TokenError::Unavailable {
                reason,
                retry_after: None,
            })?;
        request_with_assertion(
            entra,
            &self.endpoint,
            &url,
            &self.client_id,
            &assertion,
            scope,
        )
        .await
    }
}

/// A signed client assertion for `aud` (the token URL).
pub fn assertion(
    m: &KeyMaterial,
    client_id: &str,
    aud: &str,
    alg: AssertionAlg,
    send_chain: bool,
) -> Result<Secret, String> {
    let leaf = m.chain[0].as_ref();
    let mut header = match alg {
        AssertionAlg::Ps256 => {
            serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint_sha256(leaf)})
        }
        AssertionAlg::Rs256 => {
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": thumbprint_sha1(leaf)})
        }
    };
    if send_chain {
        header["x5c"] = m
            .chain
            .iter()
            .map(|c| STANDARD.encode(c.as_ref()))
            .collect();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "aud": aud, "iss": client_id, "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now, "iat": now, "exp": now + ASSERTION_LIFETIME.as_secs(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let encoding: &'static dyn RsaEncoding = match alg {
        AssertionAlg::Ps256 => &RSA_PSS_SHA256,
        AssertionAlg::Rs256 => &RSA_PKCS1_SHA256,
    };
    let mut signature = vec![0; m.key.public().modulus_len()];
    m.key
        .sign(
            encoding,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "signing the client assertion failed".to_string())?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

/// `x5t#S256`: base64url of the certificate's SHA-256.
pub fn thumbprint_sha256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// `x5t`: base64url of the certificate's SHA-1 (for RS256 setups).
pub fn thumbprint_sha1(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        der,
    ))
}

/// The certificate's DER, for tests and the sandbox.
pub fn read_certificate_der(path: &Path) -> Result<Vec<u8>, String> {
    Ok(crate::tls::read_pem_certs(path)?
        .remove(0)
        .as_ref()
        .to_vec())
}

#[cfg(test)]
mod tests;
