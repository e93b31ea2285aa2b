//! `${VAR}` and `${VAR:-default}` expansion in the string values of a parsed `proxy.toml`.
//!
//! Expansion runs on the TOML tree before it is typed, so an error can name the key path of
//! the value that asked for a missing variable. `$$` stands for a literal `$`.

use super::ConfigError;

/// Looks a variable up; tests pass a map, the binary passes the process environment.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Expands every string value below `table`, naming `path` in errors. Every value is tried,
/// so that one run reports all the variables that are not set, not only the first.
pub fn expand_table(table: &mut toml::Table, path: &str, env: &dyn Env) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    expand_entries(table, path, env, &mut errors);
    let mut errors = errors.into_iter();
    let Some(mut first) = errors.next() else {
        return Ok(());
    };
    for e in errors {
        first.message.push_str(&format!("\n{e}"));
    }
    Err(first)
}

fn expand_entries(
    table: &mut toml::Table,
    path: &str,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) {
    for (key, value) in table.iter_mut() {
        let key = path_segment(key);
        let child = if path.is_empty() {
            key.into_owned()
        } else {
            format!("{path}.{key}")
        };
        expand_value(value, &child, env, errors);
    }
}

/// A key as a path segment: bare when TOML allows, else quoted, so that `""` or `"a.b"`
/// still name a place.
pub(super) fn path_segment(key: &str) -> std::borrow::Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if bare {
        key.into()
    } else {
        format!("{key:?}").into()
    }
}

fn expand_value(value: &mut toml::Value, path: &str, env: &dyn Env, errors: &mut Vec<ConfigError>) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(msg) => errors.push(ConfigError::new(path, msg)),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => expand_entries(t, path, env, errors),
        _ => {}
    }
}

/// Expands one string. The error message names the variable, never a value.
pub fn expand_str(input: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated `${` in value".to_string())?;
            out.push_str(&substitute(&after[..end], env)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute(expr: &str, env: &dyn Env) -> Result<String, String> {
    let (name, default) = match expr.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (expr, None),
    };
    if !is_var_name(name) {
        // Not echoed: this may be a secret that happens to contain `${`.
        return Err(
            "`${...}` holds no variable name (letters, digits, _; write $$ for a literal $)"
                .to_string(),
        );
    }
    match (env.var(name).filter(|v| !v.is_empty()), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!("environment variable {name} is not set")),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TENANT" => Some("t-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn plain_and_braced_variables_expand() {
        assert_eq!(expand_str("a-${TENANT}-b", &env).unwrap(), "a-t-1-b");
        assert_eq!(expand_str("no vars", &env).unwrap(), "no vars");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(expand_str("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand_str("${EMPTY:-y}", &env).unwrap(), "y");
        assert_eq!(expand_str("${NOPE:-}", &env).unwrap(), "");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(expand_str("p$$w${TENANT}", &env).unwrap(), "p$wt-1");
        assert_eq!(expand_str("cost $5", &env).unwrap(), "cost $5");
    }

    #[test]
    fn missing_variable_is_named() {
        let err = expand_str("${AZURE_CLIENT_SECRET}", &env).unwrap_err();
        assert_eq!(err, "environment variable AZURE_CLIENT_SECRET is not set");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand_str("${OPEN", &env).is_err());
        assert!(expand_str("${1BAD}", &env).is_err());
        assert!(expand_str("${}", &env).is_err());
    }

    #[test]
    fn malformed_references_are_not_echoed() {
        let err = expand_str("pa${5s w0rd}", &env).unwrap_err();
        assert!(!err.contains("5s w0rd"), "{err}");
        assert!(err.contains("$$"), "{err}");
    }

    #[test]
    fn errors_name_the_key_path() {
        let mut t: toml::Table = toml::from_str("[[route]]\nupstream = \"${MISSING}\"").unwrap();
        let err = expand_table(&mut t, "", &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "route[0].upstream: environment variable MISSING is not set"
        );
    }

    #[test]
    fn every_missing_variable_is_named_in_one_error() {
        let mut t: toml::Table =
            toml::from_str("[c]\na = \"${ONE}\"\nb = \"${TENANT}\"\nc = [\"${TWO}\"]").unwrap();
        let err = expand_table(&mut t, "", &env).unwrap_err();
        assert_eq!(err.path, "c.a");
        assert_eq!(
            err.to_string(),
            "c.a: environment variable ONE is not set\nc.c[0]: environment variable TWO is not set"
        );
    }

    /// Found by `tests/properties`: a top-level key `""` gave an error with no path at all.
    #[test]
    fn keys_that_are_not_bare_are_quoted_in_the_path() {
        let mut t: toml::Table = toml::from_str("\"\" = \"${MISSING}\"").unwrap();
        assert_eq!(expand_table(&mut t, "", &env).unwrap_err().path, "\"\"");
        let mut t: toml::Table = toml::from_str("[a]\n\"b.c\" = \"${MISSING}\"").unwrap();
        assert_eq!(
            expand_table(&mut t, "", &env).unwrap_err().path,
            "a.\"b.c\""
        );
    }
}
