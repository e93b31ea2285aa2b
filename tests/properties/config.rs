//! `Config::from_toml` on arbitrary text and on valid configs with keys, values and structure
//! mutated: it never panics, every error names a key path or a line and no secret, and a
//! config that loads validates again to the same thing.

use defender_proxy::config::Config;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::mutate::{edit, line, mutate};
use crate::oracle::{GUID_B, check_config, env};

/// A config using every table and most credential types.
const PARTNER: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = ""
allowed_hosts = ["localhost", "127.0.0.1"]
inbound_key = "literal-inbound-key"

[cloud]
name = "public"

[tls]

[log]
format = "json"
access_log = false

[credentials.app]
type = "client_secret"
tenant_id = "contoso.onmicrosoft.com"
client_id = "${AZURE_CLIENT_ID}"
client_secret = "literal-client-secret"
token_version = 1

[credentials.app.tenants]
contoso = "22222222-2222-2222-2222-222222222222"
any = "*"

[credentials.mi]
type = "managed_identity"
client_id = "client-id"

[credentials.wi]
type = "workload_identity"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "c"
token_file = "/var/run/secrets/token"
token_url = "http://127.0.0.1:9/{tenant}/oauth2/token"

[credentials.ropc]
type = "password"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "c"
username = "user@contoso.test"
password = "literal-password"

[[route]]
name = "xdr-eu"
prefix = "/api/"
upstream = "xdr"
region = "eu"
credential = "app"
tenant = "contoso"
rate_limit = "x"

[[route]]
name = "mi"
prefix = "/mi"
strip_prefix = true
upstream = "https://example.test/base/"
scope = "https://example.test/.default"
credential = "mi"
rewrite_links = false

[[route]]
name = "wi"
prefix = "/wi/a"
upstream = "http://[::1]:9"
scope = "api://x/.default"
credential = "wi"
retry_throttled = false

[[route]]
name = "ropc"
prefix = "/"
upstream = "graph"
credential = "ropc"

[rate_limit.x]
per_minute = 10
per_hour = 100
max_wait_secs = 0
"#;

/// Values that only ever live in secret keys of the base configs.
const LITERAL_SECRETS: [&str; 3] = [
    "literal-inbound-key",
    "literal-client-secret",
    "literal-password",
];

fn bases() -> Vec<String> {
    let sandbox = crate::common::config_text("http://127.0.0.1:9", &Default::default());
    vec![
        include_str!("../../proxy.toml").to_string(),
        sandbox,
        PARTNER.to_string(),
    ]
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = check_config(&text);
    }

    #[test]
    fn toml_shaped_text_never_panics(lines in prop::collection::vec(line(), 0..30)) {
        let _ = check_config(&lines.join("\n"));
    }

    #[test]
    fn mutated_configs_load_or_explain(
        base in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let bases = bases();
        let text = mutate(&bases[base.index(bases.len())], &edits, &[]);
        let _ = check_config(&text);
    }

    /// Whatever happens around them, secret values stay out of errors and `Debug`.
    #[test]
    fn secrets_never_show(
        secret in "[A-Za-z0-9~._-]{12,30}",
        reference in "[0-9~.-][A-Za-z0-9 ~.-]{5,12}",
        braced in any::<bool>(),
        base in any::<Index>(),
        edits in prop::collection::vec(edit(), 0..4),
    ) {
        let secret = if braced { format!("{secret}${{{reference}}}") } else { secret };
        let bases = bases();
        let text = bases[base.index(bases.len())]
            .replace("${AZURE_CLIENT_SECRET}", &secret);
        let text = LITERAL_SECRETS.iter().fold(text, |t, s| t.replace(s, &secret));
        let text = mutate(&text, &edits, &[secret.as_str()]);
        let shown = match check_config(&text) {
            Ok(config) => format!("{config:?}"),
            Err(e) => e.to_string(),
        };
        prop_assert!(!shown.contains(&secret), "{shown}");
        if braced {
            prop_assert!(!shown.contains(&reference), "{shown}");
        }
    }

    /// A password in a URL's user info is a secret too, whatever else is wrong with the URL.
    #[test]
    fn url_credentials_never_show(
        password in "[A-Za-z0-9~._-]{12,30}",
        scheme in prop::sample::select(&["https", "http", "ftp", ""][..]),
        suffix in prop::sample::select(&["", "/p", "/?q=1", "#f", " x", ":99999"][..]),
        key in 0..3usize,
    ) {
        let url = format!("{scheme}://user:{password}@example.test{suffix}");
        let line = ["upstream", "token_url", "authority_host"][key];
        let text = match line {
            "authority_host" => PARTNER.replace("name = \"public\"", &format!("authority_host = {url:?}")),
            "token_url" => PARTNER.replace("token_version = 1", &format!("token_url = {url:?}")),
            _ => PARTNER.replace("\"https://example.test/base/\"", &format!("{url:?}")),
        };
        let e = check_config(&text).expect_err("credentials in a URL are refused");
        prop_assert!(!e.to_string().contains(&password), "{e}");
    }

    /// An environment value is data: whatever TOML it holds, it lands verbatim in its key.
    #[test]
    fn env_values_are_data_not_toml(value in "\\PC+|.*\n\\[server\\]\nallow_remote = true.*") {
        let text = PARTNER
            .replace("client_id = \"${AZURE_CLIENT_ID}\"", "client_id = \"${INJECTED}\"")
            .replace("name = \"mi\"", "name = \"${INJECTED}\"");
        let lookup = |name: &str| (name == "INJECTED").then(|| value.clone()).or_else(|| env(name));
        let config = Config::from_toml(&text, &lookup);
        prop_assert!(config.is_ok(), "{:?}", config.err());
        let config = config.unwrap();
        prop_assert_eq!(config.credentials["app"].client_id.as_deref(), Some(value.as_str()));
        prop_assert_eq!(&config.routes[1].name, &value);
        prop_assert!(!config.server.allow_remote);
    }

    /// A missing variable's error names the key path of the value that asked for it.
    #[test]
    fn missing_variables_name_their_key_path(
        keys in prop::collection::vec("[a-z_]{1,8}", 1..4),
        index in prop::option::of(0..3usize),
    ) {
        let mut value = toml::Value::String("${NOT_SET_ANYWHERE}".into());
        for k in keys[1..].iter().rev() {
            value = toml::Value::Table(toml::Table::from_iter([(k.clone(), value)]));
        }
        let mut expected = keys[0].clone();
        if let Some(i) = index {
            let filler = toml::Value::Table(toml::Table::new());
            let filler = if keys.len() > 1 { filler } else { toml::Value::String("x".into()) };
            let mut items = vec![filler; i];
            items.push(value);
            value = toml::Value::Array(items);
            expected = format!("{expected}[{i}]");
        }
        for k in &keys[1..] {
            expected = format!("{expected}.{k}");
        }
        let text = toml::to_string(&toml::Table::from_iter([(keys[0].clone(), value)])).unwrap();
        let e = Config::parse(&text, &env).expect_err("the variable is missing");
        prop_assert_eq!(&e.path, &expected);
        prop_assert!(e.message.contains("NOT_SET_ANYWHERE"), "{}", e);
    }
}

#[test]
fn the_base_configs_are_valid() {
    for base in bases() {
        if let Err(e) = check_config(&base) {
            panic!("{e}\n{base}");
        }
    }
}

#[test]
fn the_partner_config_names_no_secret_when_broken() {
    let e = check_config(&PARTNER.replace("per_minute = 10", "per_minute = 0")).unwrap_err();
    assert_eq!(e.path, "rate_limit.x");
    assert!(LITERAL_SECRETS.iter().all(|s| !e.to_string().contains(s)));
    assert!(format!("{:?}", check_config(PARTNER).unwrap()).contains(GUID_B));
}
