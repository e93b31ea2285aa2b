//! A user's config pointed at the sandbox: the authority and every upstream go to the sandbox,
//! and the sandbox is told about the config's apps, certificates, federated tokens, managed
//! identities and users, so that each credential works as it is written. Routes, tenants,
//! limits and the server section are kept.

use defender_sandbox::{SandboxClient, SandboxOptions};

use crate::cloud::{Cloud, Service};
use crate::config::{Config, ConfigError, CredentialConfig, CredentialType, read_secret};
use crate::token::certificate::CertificateFiles;

/// Points `config` at a sandbox at `url` (`http://IP:PORT`) and adds to `opts` what the
/// sandbox needs to accept the config's credentials. Device code credentials get a token
/// store of their own under `store_dir`, so a real sign-in is never overwritten.
///
/// # Errors
///
/// When a secret, certificate or federated token file of the config cannot be read.
pub fn retarget(
    config: &mut Config,
    url: &str,
    opts: &mut SandboxOptions,
    store_dir: &std::path::Path,
) -> Result<(), ConfigError> {
    let cloud = Cloud::parse(&config.cloud.name).unwrap_or(Cloud::Public);
    config.cloud.authority_host = Some(url.to_owned());
    for route in &mut config.routes {
        let (upstream, default_scope) = match Service::parse(&route.upstream) {
            Some(service) => cloud
                .service(service, route.region.as_deref())
                .unwrap_or_else(|| (String::new(), String::new())),
            None => (route.upstream.clone(), String::new()),
        };
        route.upstream = format!("{url}{}", path_of(&upstream));
        route.region = None;
        let scope = route.scope.get_or_insert(default_scope);
        let audience = scope.trim_end_matches("/.default").to_owned();
        if !audience.is_empty() && !opts.audiences.contains(&audience) {
            opts.audiences.push(audience);
        }
    }
    for (name, c) in &mut config.credentials {
        c.token_url = None;
        play(name, c, url, opts, store_dir)?;
    }
    // The device code flow polls; the sandbox approves at once, so poll every second.
    opts.device_code_interval_secs = 1;
    Ok(())
}

/// The path of an upstream URL (`/api/advancedqueries` of `https://host/api/advancedqueries`),
/// without a trailing slash; empty for a bare host.
fn path_of(upstream: &str) -> &str {
    let rest = upstream
        .split_once("://")
        .map_or(upstream, |(_, rest)| rest);
    rest.find('/')
        .map_or("", |i| &rest[i..])
        .trim_end_matches('/')
}

/// Registers what the sandbox needs for credential `name` to work as configured.
fn play(
    name: &str,
    c: &mut CredentialConfig,
    url: &str,
    opts: &mut SandboxOptions,
    store_dir: &std::path::Path,
) -> Result<(), ConfigError> {
    let path = format!("credentials.{name}");
    let client_id = c.client_id.clone().unwrap_or_default();
    let client_secret = match c.kind {
        CredentialType::ClientSecret | CredentialType::Password => read_secret(
            &c.client_secret,
            &c.client_secret_file,
            &format!("{path}.client_secret"),
        )?
        .map(|s| s.expose().to_owned()),
        _ => None,
    };
    if !client_id.is_empty() {
        opts.clients.push(SandboxClient {
            client_id: client_id.clone(),
            client_secret: client_secret.unwrap_or_default(),
            tenants: vec!["*".to_owned()],
        });
    }
    match c.kind {
        CredentialType::ClientSecret => {}
        CredentialType::ClientCertificate => {
            let der = certificate_der(c)
                .map_err(|e| ConfigError::new(format!("{path}.certificate"), e))?;
            opts.certificates.push((client_id, der));
        }
        CredentialType::WorkloadIdentity => {
            let file = c.token_file.clone().unwrap_or_default();
            let token = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::new(
                    format!("{path}.token_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            opts.federated_tokens
                .push((client_id, token.trim().to_owned()));
        }
        CredentialType::ManagedIdentity => {
            let endpoint = match app_service_header() {
                Some(header) => {
                    opts.identity_header = header;
                    "/msi/token"
                }
                None => "/metadata/identity/oauth2/token",
            };
            c.endpoint = Some(format!("{url}{endpoint}"));
            let chosen = [&c.client_id, &c.object_id, &c.resource_id];
            if let Some(id) = chosen.into_iter().flatten().next() {
                opts.managed_identities.push(id.clone());
            }
        }
        CredentialType::DeviceCode => {
            c.token_store = Some(store_dir.join(format!("{name}.json")));
        }
        CredentialType::Password => {
            let password = read_secret(&c.password, &c.password_file, &format!("{path}.password"))?;
            let user = c.username.clone().unwrap_or_default();
            opts.users.push((
                user,
                password.map(|p| p.expose().to_owned()).unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// `IDENTITY_HEADER` when the proxy would use the App Service endpoint (as azure-identity
/// decides: both `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` set).
fn app_service_header() -> Option<String> {
    std::env::var("IDENTITY_ENDPOINT").ok()?;
    std::env::var("IDENTITY_HEADER").ok()
}

/// The DER of the certificate the credential signs with (PEM or PKCS#12).
fn certificate_der(c: &CredentialConfig) -> Result<Vec<u8>, String> {
    let files = CertificateFiles {
        certificate: c.certificate.clone().unwrap_or_default(),
        private_key: c.private_key.clone(),
        password: read_secret(&c.certificate_password, &c.certificate_password_file, "")
            .map_err(|e| e.message)?,
    };
    Ok(files.load()?.leaf_der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_are_kept_without_the_host() {
        assert_eq!(path_of("https://api.security.microsoft.com"), "");
        assert_eq!(path_of("https://api.securitycenter.microsoft.com/"), "");
        assert_eq!(
            path_of("https://api.securitycenter.microsoft.com/api/advancedqueries"),
            "/api/advancedqueries"
        );
    }

    #[test]
    fn routes_and_credentials_point_at_the_sandbox() {
        let text = r#"
[cloud]
name = "gcc"
[credentials.app]
type = "client_secret"
tenant_id = "00000000-0000-0000-0000-000000000001"
client_id = "00000000-0000-0000-0000-0000000000c2"
client_secret = "s3"
[credentials.mi]
type = "managed_identity"
client_id = "00000000-0000-0000-0000-0000000000c3"
[[route]]
name = "xdr"
prefix = "/"
upstream = "xdr"
credential = "app"
[[route]]
name = "mi"
prefix = "/mi/"
upstream = "https://api-gcc.securitycenter.microsoft.us/api"
scope = "https://api-gcc.securitycenter.microsoft.us/.default"
credential = "mi"
"#;
        let mut config = Config::from_toml(text, &|_: &str| None).expect("valid");
        let mut opts = SandboxOptions::default();
        let url = "http://127.0.0.1:8090";
        retarget(&mut config, url, &mut opts, std::path::Path::new(".")).expect("retargets");
        assert_eq!(config.cloud.authority_host.as_deref(), Some(url));
        assert_eq!(config.routes[0].upstream, url);
        assert_eq!(
            config.routes[0].scope.as_deref(),
            Some("https://api-gcc.security.microsoft.us/.default")
        );
        assert_eq!(config.routes[1].upstream, format!("{url}/api"));
        assert!(
            opts.audiences
                .contains(&"https://api-gcc.security.microsoft.us".to_owned())
        );
        let app = opts
            .clients
            .iter()
            .find(|c| c.client_id.ends_with("c2"))
            .expect("registered");
        assert_eq!(
            (app.client_secret.as_str(), app.tenants.as_slice()),
            ("s3", &["*".to_owned()][..])
        );
        assert!(opts.managed_identities.iter().any(|m| m.ends_with("c3")));
        let config = config.validated(&|_: &str| None).expect("still valid");
        assert_eq!(
            config.credentials["mi"]
                .endpoint
                .as_deref()
                .map(|e| e.starts_with(url)),
            Some(true)
        );
    }
}
