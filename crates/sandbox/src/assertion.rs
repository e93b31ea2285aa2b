//! Client assertions signed with a certificate, checked as Entra ID does: the thumbprint names
//! a certificate registered for the app, the signature verifies with its key, the audience is
//! this token endpoint, `iss` = `sub` = the client, the time window is short and current, and a
//! `jti` is never accepted twice.

use std::collections::HashSet;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::entra_error::EntraError;
use super::time::unix_now;

/// Registered certificates and the `jti`s already seen.
#[derive(Default)]
pub(super) struct Certificates {
    /// (client ID lower case, certificate DER).
    registered: Mutex<Vec<(String, Vec<u8>)>>,
    seen_jti: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Certificates {
    pub fn new(registered: &[(String, Vec<u8>)]) -> Self {
        let registered = registered
            .iter()
            .map(|(c, d)| (c.to_ascii_lowercase(), d.clone()))
            .collect();
        Certificates {
            registered: Mutex::new(registered),
            seen_jti: Mutex::default(),
        }
    }

    /// Replaces the certificates registered for `client_id`.
    pub fn set(&self, client_id: &str, certs: Vec<Vec<u8>>) {
        let id = client_id.to_ascii_lowercase();
        let mut reg = lock(&self.registered);
        reg.retain(|(c, _)| *c != id);
        reg.extend(certs.into_iter().map(|d| (id.clone(), d)));
    }

    /// True when the assertion is a JWT (not a federated token the caller checks otherwise).
    pub fn is_signed_assertion(assertion: &str) -> bool {
        header(assertion).is_some_and(|h| h.get("x5t#S256").is_some() || h.get("x5t").is_some())
    }

    /// Checks `assertion` for `client_id` at the endpoint `tenant` / `path_suffix`.
    pub fn verify(&self, client_id: &str, assertion: &str, tenant: &str) -> Result<(), EntraError> {
        let bad = || EntraError::bad_assertion_signature(client_id);
        let mut parts = assertion.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let head = header(assertion).ok_or_else(bad)?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?)
            .map_err(|_| bad())?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let cert = self.certificate_for(client_id, &head).ok_or_else(bad)?;
        verify_signature(&cert, &head, format!("{h}.{c}").as_bytes(), &signature)
            .ok_or_else(bad)?;
        check_claims(&claims, client_id, tenant)?;
        let jti = claims["jti"].as_str().ok_or_else(bad)?.to_owned();
        if !lock(&self.seen_jti).insert(jti) {
            return Err(EntraError::assertion_replayed());
        }
        Ok(())
    }

    fn certificate_for(&self, client_id: &str, head: &Value) -> Option<Vec<u8>> {
        let id = client_id.to_ascii_lowercase();
        let reg = lock(&self.registered);
        reg.iter()
            .filter(|(c, _)| *c == id)
            .map(|(_, d)| d)
            .find(|der| {
                let s256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der));
                let s1 = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    der,
                ));
                head["x5t#S256"].as_str() == Some(s256.as_str())
                    || head["x5t"].as_str() == Some(s1.as_str())
            })
            .cloned()
    }
}

fn header(assertion: &str) -> Option<Value> {
    let h = assertion.split('.').next()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()
}

fn verify_signature(cert_der: &[u8], head: &Value, message: &[u8], signature: &[u8]) -> Option<()> {
    let der = rustls::pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    let alg: &dyn rustls::pki_types::SignatureVerificationAlgorithm = match head["alg"].as_str()? {
        "PS256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        "RS256" => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        _ => return None,
    };
    cert.verify_signature(alg, message, signature).ok()
}

fn check_claims(claims: &Value, client_id: &str, tenant: &str) -> Result<(), EntraError> {
    let aud = claims["aud"].as_str().unwrap_or("");
    let for_us = aud.ends_with(&format!("/{tenant}/oauth2/v2.0/token"))
        || aud.ends_with(&format!("/{tenant}/oauth2/token"));
    let who =
        claims["iss"].as_str() == Some(client_id) && claims["sub"].as_str() == Some(client_id);
    if !for_us || !who {
        return Err(EntraError::bad_assertion_audience(aud));
    }
    let now = unix_now();
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap_or(u64::MAX),
        claims["exp"].as_u64().unwrap_or(0),
    );
    let skew = 300;
    if nbf > now + skew || exp <= now || exp.saturating_sub(nbf) > 600 + skew {
        return Err(EntraError::assertion_expired());
    }
    Ok(())
}
