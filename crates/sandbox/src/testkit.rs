//! Helpers shared by the sandbox's tests: start a sandbox, talk to it with reqwest.

use serde_json::Value;

use super::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Sandbox, SandboxOptions};

pub const XDR: &str = "https://api.security.microsoft.com";

pub async fn start(opts: SandboxOptions) -> Sandbox {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Sandbox::start(listener, opts).await.expect("start")
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// POSTs a form to a token endpoint path (`/{tenant}/oauth2/...`); returns status and JSON.
pub async fn post_token(sb: &Sandbox, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = http()
        .post(format!("{}{path}", sb.url()))
        .form(form)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A v2 client-credentials form for the default client.
pub fn v2_form(scope: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", DEFAULT_CLIENT_ID.to_owned()),
        ("client_secret", DEFAULT_CLIENT_SECRET.to_owned()),
        ("scope", format!("{scope}/.default")),
    ]
}

/// A token of the default client for `tenant` and `audience`.
pub async fn token(sb: &Sandbox, tenant: &str, audience: &str) -> String {
    let form = v2_form(audience);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = post_token(sb, &format!("/{tenant}/oauth2/v2.0/token"), &form).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// GET `path_and_query` (or an absolute URL) with a bearer token.
pub async fn get(sb: &Sandbox, token: &str, path: &str) -> reqwest::Response {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", sb.url())
    };
    http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
}

/// GET and parse JSON, asserting the status.
pub async fn get_json(sb: &Sandbox, token: &str, path: &str, want: u16) -> Value {
    let resp = get(sb, token, path).await;
    assert_eq!(resp.status().as_u16(), want, "GET {path}");
    resp.json().await.expect("json body")
}
