//! Tests of parsing, expansion and validation, each checking the key path it names.

use super::*;

const BASE: &str = r#"
[credentials.app]
type = "client_secret"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "client"
client_secret = "s3cret-value"

[[route]]
name = "defender"
prefix = "/"
upstream = "xdr"
credential = "app"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn err(text: &str) -> ConfigError {
    Config::from_toml(text, &no_env).unwrap_err()
}

#[test]
fn a_minimal_config_is_valid_with_defaults() {
    let c = Config::from_toml(BASE, &no_env).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.tenant_header, "x-tenant-id");
    assert_eq!(c.server.request_timeout_secs, 300);
}

#[test]
fn max_wait_defaults_to_the_shortest_window_and_a_bit() {
    let c = Config::from_toml(
        &format!(
            "{BASE}\n[rate_limit.m]\nper_minute = 1\nper_hour = 9\n\
             [rate_limit.h]\nper_hour = 9\n[rate_limit.set]\nper_minute = 1\nmax_wait_secs = 7\n"
        ),
        &no_env,
    )
    .unwrap();
    assert_eq!(c.rate_limit["m"].max_wait_secs(), 65);
    assert_eq!(c.rate_limit["h"].max_wait_secs(), 3605);
    assert_eq!(c.rate_limit["set"].max_wait_secs(), 7);
    assert_eq!(c.server.max_wait_secs, 60);
}

#[test]
fn unknown_key_names_its_path() {
    let e = err(&format!("{BASE}\n[server]\nlisten_addr = \"x\"\n"));
    assert_eq!(e.path, "server.listen_addr");
    assert!(e.message.contains("unknown field `listen_addr`"), "{e}");
    let e = err(&BASE.replace("credential = \"app\"", "credential = \"app\"\nstrip = true"));
    assert_eq!(e.path, "route[0].strip");
    assert!(e.message.contains("unknown field `strip`"), "{e}");
    let e = err(&format!(
        "{BASE}\n[rate_limit.x]\nper_minute = 1\nper_day = 3\n"
    ));
    assert_eq!(e.path, "rate_limit.x.per_day");
    // Found by `tests/properties`: a top-level key `""` gave an error with no path at all.
    let e = err(&format!("\"\" = 1\n{BASE}"));
    assert_eq!(e.path, "\"\"");
    assert_eq!(err(&format!("{BASE}\n\"\" = 1\n")).path, "route[0].\"\"");
    let e = err(&format!(
        "{BASE}\n[rate_limit.\"a.b\"]\nper_minute = 1\nper_day = 3\n"
    ));
    assert_eq!(e.path, "rate_limit.\"a.b\".per_day");
}

#[test]
fn syntax_errors_name_the_line_and_column_never_the_text() {
    let e = err("[server]\nlisten = \"127.0.0.1:8080\"\ns3cret-value\n");
    assert_eq!(e.path, "");
    assert!(
        e.message.starts_with("invalid TOML at line 3, column "),
        "{e}"
    );
    assert!(!e.message.contains("s3cret"), "{e}");
    assert!(
        err("A").message.contains("line 1, column 2"),
        "{}",
        err("A")
    );
}

/// Found by `tests/properties`: serde quoted the string it could not place, and a secret
/// under `[credentials]` (for `[credentials.app]`) ended up in the error.
#[test]
fn a_string_in_the_wrong_place_is_not_echoed() {
    let e = err("[credentials]\nclient_secret = \"s3cret-value\"\n");
    assert_eq!(e.path, "credentials.client_secret");
    assert!(
        e.message.starts_with("invalid type: string, expected"),
        "{e}"
    );
    assert!(!e.message.contains("s3cret"), "{e}");
}

#[test]
fn wrong_types_name_their_path() {
    let e = err(&format!(
        "{BASE}\n[server]\nrequest_timeout_secs = \"soon\"\n"
    ));
    assert_eq!(e.path, "server.request_timeout_secs");
}

#[test]
fn missing_credential_reference_is_named_with_the_route_name() {
    let e = err(&BASE.replace("credential = \"app\"", "credential = \"ap\""));
    assert_eq!(
        e.to_string(),
        "route[0].credential: no credential named \"ap\" (route \"defender\")"
    );
}

#[test]
fn route_errors_from_parsing_and_expansion_name_the_route() {
    let e = err(&BASE.replace("credential = \"app\"", "credential = \"app\"\nstrip = true"));
    assert!(e.message.ends_with("(route \"defender\")"), "{e}");
    let e = err(&BASE.replace("upstream = \"xdr\"", "upstream = \"${NO_SUCH_UPSTREAM}\""));
    assert_eq!(
        e.to_string(),
        "route[0].upstream: environment variable NO_SUCH_UPSTREAM is not set (route \"defender\")"
    );
}

#[test]
fn a_config_without_routes_is_refused() {
    for text in [
        "",
        "[server]\nlisten = \"127.0.0.1:8080\"\n",
        &BASE[..BASE.find("[[route]]").unwrap()],
    ] {
        let e = err(text);
        assert_eq!(e.path, "route", "{text}");
        assert!(e.message.contains("defines no route"), "{e}");
    }
}

#[test]
fn a_duplicate_key_is_named_with_its_table() {
    let e = err(&format!(
        "{BASE}\n[server]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n"
    ));
    assert!(
        e.message.ends_with("duplicate key `listen` in [server]"),
        "{e}"
    );
    assert!(e.message.contains("line "), "{e}");
    let e = err(&format!("{BASE}\n[server]\n[server]\n"));
    assert!(e.message.contains("duplicate key `server`"), "{e}");
    let e = err(&BASE.replace(
        "client_secret = \"s3cret-value\"",
        "client_secret = \"s3cret-value\"\nclient_secret = \"other-s3cret\"",
    ));
    assert!(
        e.message
            .ends_with("duplicate key `client_secret` in [credentials.app]"),
        "{e}"
    );
    assert!(!e.message.contains("s3cret"), "{e}");
}

#[test]
fn missing_rate_limit_reference_is_named() {
    let e = err(&BASE.replace(
        "credential = \"app\"",
        "credential = \"app\"\nrate_limit = \"nope\"",
    ));
    assert_eq!(e.path, "route[0].rate_limit");
}

#[test]
fn plain_http_is_refused_except_to_loopback() {
    let e = err(&BASE.replace(
        "upstream = \"xdr\"",
        "upstream = \"http://api.security.microsoft.com\"\nscope = \"x/.default\"",
    ));
    assert_eq!(e.path, "route[0].upstream");
    assert!(e.message.contains("plain http"), "{e}");
    for ok in [
        "http://127.0.0.1:9000",
        "http://localhost:1",
        "http://[::1]:2",
    ] {
        let text = BASE.replace(
            "upstream = \"xdr\"",
            &format!("upstream = \"{ok}\"\nscope = \"x/.default\""),
        );
        Config::from_toml(&text, &no_env).unwrap();
    }
    let e = err(&format!(
        "{BASE}\n[cloud]\nauthority_host = \"http://login.example.com\"\n"
    ));
    assert_eq!(e.path, "cloud.authority_host");
}

#[test]
fn authority_host_falls_back_to_the_environment() {
    let env = |k: &str| {
        (k == "AZURE_AUTHORITY_HOST").then(|| "https://login.microsoftonline.us/".to_string())
    };
    let c = Config::from_toml(BASE, &env).unwrap();
    assert_eq!(
        c.cloud.authority_host.as_deref(),
        Some("https://login.microsoftonline.us/")
    );
}

#[test]
fn url_upstream_needs_a_scope() {
    let e = err(&BASE.replace(
        "upstream = \"xdr\"",
        "upstream = \"https://api.example.com\"",
    ));
    assert_eq!(e.path, "route[0].scope");
}

#[test]
fn missing_variable_names_the_key_and_variable_never_a_value() {
    let text = BASE.replace(
        "client_secret = \"s3cret-value\"",
        "client_secret = \"${AZURE_CLIENT_SECRET}\"",
    );
    let e = err(&text);
    assert_eq!(
        e.to_string(),
        "credentials.app.client_secret: environment variable AZURE_CLIENT_SECRET is not set"
    );
    let env = |k: &str| (k == "AZURE_CLIENT_SECRET").then(|| "from-env".to_string());
    let c = Config::from_toml(&text, &env).unwrap();
    assert_eq!(
        c.credentials["app"]
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "from-env"
    );
}

#[test]
fn client_secret_type_falls_back_to_azure_identity_variables() {
    let text = r#"
[credentials.app]
type = "client_secret"
[[route]]
name = "d"
prefix = "/"
upstream = "xdr"
credential = "app"
"#;
    let e = err(text);
    assert_eq!(e.path, "credentials.app.tenant_id");
    let env = |k: &str| match k {
        "AZURE_TENANT_ID" => Some("11111111-1111-1111-1111-111111111111".to_string()),
        "AZURE_CLIENT_ID" => Some("cid".to_string()),
        "AZURE_CLIENT_SECRET" => Some("sec".to_string()),
        _ => None,
    };
    let c = Config::from_toml(text, &env).unwrap();
    assert_eq!(c.credentials["app"].client_id.as_deref(), Some("cid"));
}

#[test]
fn keys_of_other_credential_types_are_refused() {
    let e = err(&BASE.replace(
        "client_id = \"client\"",
        "client_id = \"client\"\nusername = \"u\"",
    ));
    assert_eq!(
        e.to_string(),
        "credentials.app.username: is not used by type \"client_secret\""
    );
}

#[test]
fn tenant_table_takes_guids_or_star() {
    let ok = format!(
        "{BASE}\n[credentials.app.tenants]\ncontoso = \"22222222-2222-2222-2222-222222222222\"\nany = \"*\"\n"
    );
    Config::from_toml(&ok, &no_env).unwrap();
    let bad = format!("{BASE}\n[credentials.app.tenants]\ncontoso = \"contoso.com\"\n");
    assert_eq!(err(&bad).path, "credentials.app.tenants.contoso");
}

/// A header or pin must name one tenant: an alias the header cannot carry, two aliases that
/// differ only in case, or an alias that looks like another tenant would be resolved to
/// something other than what the config says (found by `tests/properties`).
#[test]
fn tenant_aliases_name_one_tenant_each() {
    let tenants = |lines: &str| {
        let text = format!("{BASE}\n[credentials.app.tenants]\n{lines}\n");
        Config::from_toml(&text, &no_env).map(|_| ())
    };
    let b = "\"22222222-2222-2222-2222-222222222222\"";
    let c = "\"33333333-3333-3333-3333-333333333333\"";
    assert!(
        tenants(&format!(
            "contoso = {b}\n\"a.b_c-d\" = {c}\n\"any one\" = \"*\""
        ))
        .is_ok()
    );
    for (lines, alias) in [
        (format!("\"my tenant\" = {b}"), "\"my tenant\""),
        (format!("\"x/y\" = {b}"), "\"x/y\""),
        (format!("\"{}\" = {b}", "a".repeat(257)), ""),
        (format!("Contoso = {b}\ncontoso = {c}"), "contoso"),
        (format!("Home = {b}"), "Home"),
        (format!("33333333-3333-3333-3333-333333333333 = {b}"), ""),
        (
            format!("\"11111111-1111-1111-1111-111111111111\" = {b}"),
            "",
        ),
    ] {
        let e = tenants(&lines).unwrap_err();
        assert!(
            e.path.starts_with("credentials.app.tenants."),
            "{lines}: {e}"
        );
        assert!(
            alias.is_empty() || e.path.ends_with(alias.trim_matches('"')),
            "{lines}: {e}"
        );
    }
    assert!(
        tenants(&format!(
            "33333333-3333-3333-3333-333333333333 = {}",
            c.to_uppercase()
        ))
        .is_ok()
    );
    let domain_home = BASE.replace(
        "11111111-1111-1111-1111-111111111111",
        "contoso.onmicrosoft.com",
    );
    let e = err(&format!(
        "{domain_home}\n[credentials.app.tenants]\n\"Contoso.onmicrosoft.com\" = {b}\n"
    ));
    assert_eq!(e.path, "credentials.app.tenants.Contoso.onmicrosoft.com");
    let long_home = BASE.replace(
        "11111111-1111-1111-1111-111111111111",
        &format!("{}.example", "a".repeat(250)),
    );
    assert_eq!(err(&long_home).path, "credentials.app.tenant_id");
}

#[test]
fn multi_tenant_aliases_are_not_a_home_tenant() {
    let e = err(&BASE.replace("11111111-1111-1111-1111-111111111111", "common"));
    assert_eq!(e.path, "credentials.app.tenant_id");
}

#[test]
fn pinned_tenant_must_be_known_to_the_credential() {
    let e = err(&BASE.replace(
        "credential = \"app\"",
        "credential = \"app\"\ntenant = \"fabrikam\"",
    ));
    assert_eq!(e.path, "route[0].tenant");
}

#[test]
fn url_errors_never_show_user_info() {
    for url in [
        "https://user:pa55word@example.test",
        "http://user:pa55word@example.test",
        "ftp://user:pa55word@example.test",
        "https://user:pa55 word@example.test",
    ] {
        let text = BASE.replace(
            "upstream = \"xdr\"",
            &format!("upstream = {url:?}\nscope = \"s\""),
        );
        let e = err(&text);
        assert_eq!(e.path, "route[0].upstream");
        assert!(!e.message.contains("pa55"), "{e}");
    }
}

#[test]
fn remote_listen_needs_opt_in_and_a_key() {
    let e = err(&format!("{BASE}\n[server]\nlisten = \"0.0.0.0:8080\"\n"));
    assert_eq!(e.path, "server.listen");
    let e = err(&format!(
        "{BASE}\n[server]\nlisten = \"0.0.0.0:8080\"\nallow_remote = true\n"
    ));
    assert_eq!(e.path, "server.inbound_key");
    Config::from_toml(&format!("{BASE}\n[server]\nlisten = \"0.0.0.0:8080\"\nallow_remote = true\ninbound_key = \"k\"\n"), &no_env)
        .unwrap();
}

#[test]
fn duplicate_prefixes_are_refused() {
    let text = format!(
        "{BASE}\n[[route]]\nname = \"two\"\nprefix = \"/\"\nupstream = \"mde\"\ncredential = \"app\"\n"
    );
    assert_eq!(err(&text).path, "route[1].prefix");
    // Routing ignores a trailing slash, so these two would compete for the same paths.
    for (first, second) in [("/mde", "/mde/"), ("/", "//")] {
        let two = |prefix: &str, name: &str| {
            format!(
                "[[route]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"mde\"\ncredential = \"app\"\n"
            )
        };
        let text = format!("{BASE}\n{}{}", two(first, "one"), two(second, "two"));
        let e = err(&text.replace(
            "prefix = \"/\"\nupstream = \"xdr\"",
            "prefix = \"/x\"\nupstream = \"xdr\"",
        ));
        assert_eq!(e.path, "route[2].prefix", "{first} {second}");
    }
}

#[test]
fn errors_and_debug_output_never_contain_the_secret() {
    let c = Config::from_toml(BASE, &no_env).unwrap();
    assert!(!format!("{c:?}").contains("s3cret-value"));
    let e = err(&BASE.replace("credential = \"app\"", "credential = \"nope\""));
    assert!(!e.to_string().contains("s3cret-value"));
}

#[test]
fn secret_files_are_read_relative_to_the_config_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "from-file\n").unwrap();
    let text = BASE.replace(
        "client_secret = \"s3cret-value\"",
        "client_secret_file = \"secret.txt\"",
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let c = Config::load(&path, &no_env).unwrap();
    let app = &c.credentials["app"];
    let s = read_secret(
        &app.client_secret,
        &app.client_secret_file,
        "credentials.app.client_secret",
    )
    .unwrap();
    assert_eq!(s.unwrap().expose(), "from-file");
}

#[test]
fn the_shipped_proxy_toml_is_valid_with_azure_variables() {
    let env = |k: &str| match k {
        "AZURE_TENANT_ID" => Some("11111111-1111-1111-1111-111111111111".to_string()),
        "AZURE_CLIENT_ID" => Some("cid".to_string()),
        "AZURE_CLIENT_SECRET" => Some("sec".to_string()),
        _ => None,
    };
    let text = include_str!("../../proxy.toml");
    let c = Config::from_toml(text, &env).unwrap();
    let prefixes: Vec<&str> = c.routes.iter().map(|r| r.prefix.as_str()).collect();
    for p in ["/", "/mde/", "/graph/"] {
        assert!(prefixes.contains(&p), "{prefixes:?}");
    }
}

#[test]
fn workload_identity_takes_the_azure_identity_variables() {
    let text = r#"
[credentials.wi]
type = "workload_identity"
[[route]]
name = "d"
prefix = "/"
upstream = "xdr"
credential = "wi"
"#;
    let e = err(text);
    assert_eq!(e.path, "credentials.wi.tenant_id");
    let env = |k: &str| match k {
        "AZURE_TENANT_ID" => Some("11111111-1111-1111-1111-111111111111".to_string()),
        "AZURE_CLIENT_ID" => Some("cid".to_string()),
        "AZURE_FEDERATED_TOKEN_FILE" => {
            Some("/var/run/secrets/azure/tokens/azure-identity-token".to_string())
        }
        "AZURE_AUTHORITY_HOST" => Some("https://login.microsoftonline.com/".to_string()),
        _ => None,
    };
    let c = Config::from_toml(text, &env).unwrap();
    let wi = &c.credentials["wi"];
    assert_eq!(
        wi.token_file.as_deref(),
        Some(std::path::Path::new(
            "/var/run/secrets/azure/tokens/azure-identity-token"
        ))
    );
    assert_eq!(
        c.cloud.authority_host.as_deref(),
        Some("https://login.microsoftonline.com/")
    );
    let only_ids = |k: &str| env(k).filter(|_| k != "AZURE_FEDERATED_TOKEN_FILE");
    assert_eq!(
        Config::from_toml(text, &only_ids).unwrap_err().path,
        "credentials.wi.token_file"
    );
}

#[test]
fn the_password_type_needs_a_user_and_a_password() {
    let base = BASE
        .replace("type = \"client_secret\"", "type = \"password\"")
        .replace("client_secret = \"s3cret-value\"\n", "");
    assert_eq!(err(&base).path, "credentials.app.username");
    let with_user = base.replace(
        "client_id = \"client\"",
        "client_id = \"client\"\nusername = \"u@x.test\"",
    );
    assert_eq!(err(&with_user).path, "credentials.app.password");
    Config::from_toml(
        &with_user.replace("username = ", "password = \"p\"\nusername = "),
        &no_env,
    )
    .unwrap();
    let both = with_user.replace(
        "username = ",
        "password = \"p\"\npassword_file = \"f\"\nusername = ",
    );
    assert_eq!(err(&both).path, "credentials.app.password_file");
}

#[test]
fn device_code_needs_a_token_store_in_an_existing_folder() {
    let base = BASE
        .replace("type = \"client_secret\"", "type = \"device_code\"")
        .replace("client_secret = \"s3cret-value\"\n", "");
    assert_eq!(err(&base).path, "credentials.app.token_store");
    let missing = base.replace(
        "client_id = \"client\"",
        "client_id = \"client\"\ntoken_store = \"/no/such/folder/store.json\"",
    );
    let e = err(&missing);
    assert_eq!(e.path, "credentials.app.token_store");
    assert!(e.message.contains("does not exist"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let ok = base.replace(
        "client_id = \"client\"",
        &format!(
            "client_id = \"client\"\ntoken_store = \"{}\"",
            dir.path().join("s.json").display()
        ),
    );
    Config::from_toml(&ok, &no_env).unwrap();
}

#[test]
fn managed_identity_takes_one_selector_and_no_tenant_table() {
    let mi = |extra: &str| {
        format!(
            "[credentials.mi]\ntype = \"managed_identity\"\n{extra}\n[[route]]\nname = \"d\"\nprefix = \"/\"\nupstream = \"xdr\"\ncredential = \"mi\"\n"
        )
    };
    Config::from_toml(&mi(""), &no_env).unwrap();
    Config::from_toml(&mi("client_id = \"x\""), &no_env).unwrap();
    assert_eq!(
        err(&mi("client_id = \"x\"\nobject_id = \"y\"")).path,
        "credentials.mi.client_id"
    );
    assert_eq!(
        err(&mi("endpoint = \"http://example.com/token\"")).path,
        "credentials.mi.endpoint"
    );
    Config::from_toml(&mi("endpoint = \"http://127.0.0.1:9/token\""), &no_env).unwrap();
    assert_eq!(
        err(&mi("[credentials.mi.tenants]\na = \"*\"")).path,
        "credentials.mi.tenants"
    );
}

#[test]
fn client_certificate_needs_a_certificate_and_a_known_algorithm() {
    let base = BASE
        .replace("type = \"client_secret\"", "type = \"client_certificate\"")
        .replace("client_secret = \"s3cret-value\"\n", "");
    assert_eq!(err(&base).path, "credentials.app.certificate");
    let env =
        |k: &str| (k == "AZURE_CLIENT_CERTIFICATE_PATH").then(|| "/certs/app.pem".to_string());
    let c = Config::from_toml(&base, &env).unwrap();
    assert_eq!(
        c.credentials["app"].certificate.as_deref(),
        Some(std::path::Path::new("/certs/app.pem"))
    );
    let bad_alg = base.replace(
        "client_id = \"client\"",
        "client_id = \"client\"\ncertificate = \"c.pem\"\nassertion_alg = \"HS256\"",
    );
    assert_eq!(err(&bad_alg).path, "credentials.app.assertion_alg");
}
