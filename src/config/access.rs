//! Validation of who may call what: route `methods`, `[clients.NAME]`, and a `unix:` listen
//! socket's path, mode and group.

use super::{Config, ConfigError, ServerConfig};

/// A `listen` value that names a Unix domain socket starts with this.
pub const UNIX_PREFIX: &str = "unix:";

/// Checks methods and clients.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(methods) = &r.methods {
            check_methods(methods, &format!("route[{i}].methods"))?;
        }
    }
    let has_inbound_key =
        config.server.inbound_key.is_some() || config.server.inbound_key_file.is_some();
    if has_inbound_key && !config.clients.is_empty() {
        return Err(ConfigError::new(
            "server.inbound_key",
            "cannot be used together with [clients]: give each client its own key",
        ));
    }
    for (name, c) in &config.clients {
        let path = format!("clients.{name}");
        match (&c.key, &c.key_file) {
            (None, None) => {
                return Err(ConfigError::new(
                    format!("{path}.key"),
                    "set key or key_file",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.key"),
                    "set key or key_file, not both",
                ));
            }
            (Some(k), None) if k.is_empty() => {
                return Err(ConfigError::new(format!("{path}.key"), "must not be empty"));
            }
            _ => {}
        }
        if let Some(methods) = &c.methods {
            check_methods(methods, &format!("{path}.methods"))?;
        }
        for route in c.routes.iter().flatten() {
            if !config.routes.iter().any(|r| &r.name == route) {
                return Err(ConfigError::new(
                    format!("{path}.routes"),
                    format!("no route named {route:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Methods are upper-case tokens (RFC 9110 §9.1), at least one; CONNECT and TRACE are never
/// forwarded, so listing them is a mistake.
fn check_methods(methods: &[String], path: &str) -> Result<(), ConfigError> {
    if methods.is_empty() {
        return Err(ConfigError::new(path, "list at least one method"));
    }
    for m in methods {
        let token = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
        if !token {
            return Err(ConfigError::new(
                path,
                format!("{m:?} is not a method such as \"GET\" or \"POST\""),
            ));
        }
        if m == "CONNECT" || m == "TRACE" {
            return Err(ConfigError::new(
                path,
                format!("{m} is never forwarded by the proxy"),
            ));
        }
    }
    Ok(())
}

/// Checks a `unix:` listen path and the socket's mode and group. A Unix socket is reachable
/// only on this host, so it is never remote.
pub(super) fn validate_socket(path: &str, s: &ServerConfig) -> Result<bool, ConfigError> {
    if !cfg!(unix) {
        return Err(ConfigError::new(
            "server.listen",
            "unix: sockets are not available on this platform",
        ));
    }
    if !path.starts_with('/') {
        return Err(ConfigError::new(
            "server.listen",
            "a unix: socket path must be absolute, such as unix:/run/defender-proxy/proxy.sock",
        ));
    }
    socket_mode(&s.socket_mode).ok_or_else(|| {
        ConfigError::new(
            "server.socket_mode",
            "must be an octal mode such as \"0660\" or \"0600\"",
        )
    })?;
    if s.socket_group.as_deref().is_some_and(str::is_empty) {
        return Err(ConfigError::new(
            "server.socket_group",
            "must be a group name or number",
        ));
    }
    Ok(false)
}

/// An octal mode of at most `0777`.
pub fn socket_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
[credentials.app]
type = "client_secret"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
client_secret = "s"

[[route]]
name = "defender"
prefix = "/"
upstream = "xdr"
credential = "app"
{extra}
"#
        );
        Config::from_toml(&text, &|_: &str| None)
    }

    #[test]
    fn a_method_that_is_not_an_upper_case_token_names_its_path() {
        let err = with("methods = [\"get\"]").unwrap_err();
        assert_eq!(err.path, "route[0].methods");
        let err = with("methods = []").unwrap_err();
        assert_eq!(err.path, "route[0].methods");
        let err = with("methods = [\"TRACE\"]").unwrap_err();
        assert_eq!(err.path, "route[0].methods");
        assert!(with("methods = [\"GET\", \"POST\"]").is_ok());
    }

    #[test]
    fn a_client_needs_one_key_and_known_routes() {
        let err = with("[clients.tool]\nroutes = [\"defender\"]").unwrap_err();
        assert_eq!(err.path, "clients.tool.key");
        let err = with("[clients.tool]\nkey = \"k\"\nroutes = [\"nope\"]").unwrap_err();
        assert_eq!(err.path, "clients.tool.routes");
        assert!(!err.to_string().contains("\"k\""));
        assert!(with("[clients.tool]\nkey = \"k\"\nroutes = [\"defender\"]").is_ok());
    }

    #[test]
    fn clients_and_the_single_inbound_key_do_not_mix() {
        let text = with("[clients.tool]\nkey = \"k\"")
            .map(|_| ())
            .and_then(|()| {
                let mut c = with("[clients.tool]\nkey = \"k\"")?;
                c.server.inbound_key = Some(crate::secret::Secret::new("x"));
                super::validate(&c)
            });
        assert_eq!(text.unwrap_err().path, "server.inbound_key");
    }

    #[test]
    fn a_socket_path_must_be_absolute_and_its_mode_octal() {
        let mut s = ServerConfig::default();
        assert!(validate_socket("relative.sock", &s).is_err());
        assert_eq!(validate_socket("/run/p.sock", &s).ok(), Some(false));
        s.socket_mode = "0999".into();
        assert_eq!(
            validate_socket("/run/p.sock", &s).unwrap_err().path,
            "server.socket_mode"
        );
        assert_eq!(socket_mode("0660"), Some(0o660));
    }
}
