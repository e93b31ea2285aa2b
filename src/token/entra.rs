//! The exchange with the identity provider: token endpoint URLs, the form POST, parsing of v1
//! and v2 answers (numbers or numeric strings), error classes, and retries with capped,
//! jittered backoff that honour `Retry-After`.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::time::Instant;

use super::{Token, TokenError};
use crate::secret::Secret;

/// OAuth errors that retrying cannot fix.
const PERMANENT_ERRORS: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_grant",
    "invalid_request",
    "unsupported_grant_type",
    "interaction_required",
    "consent_required",
    "access_denied",
    "invalid_resource",
];

/// Retry policy for one token fetch.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// First backoff; doubles each time.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
    /// A `Retry-After` longer than this ends the retries.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// The HTTP client for identity providers.
#[derive(Debug, Clone)]
pub struct EntraClient {
    http: reqwest::Client,
    /// For link-local endpoints (managed identity): never through an HTTP proxy.
    local: reqwest::Client,
    /// Retries for transient failures.
    pub retry: RetryPolicy,
}

/// Where a credential asks for tokens.
#[derive(Debug, Clone)]
pub struct TokenEndpoint {
    /// URL with `{tenant}` where the tenant goes.
    template: String,
    /// 1: `resource=`; 2: `scope=`.
    pub version: u8,
}

impl TokenEndpoint {
    /// Entra's endpoint under `authority`, or an explicit `token_url`.
    pub fn new(authority: &str, version: u8, token_url: Option<&str>) -> Self {
        let template = match token_url {
            Some(url) => url.to_string(),
            None if version == 1 => format!(
                "{}/{{tenant}}/oauth2/token",
                authority.trim_end_matches('/')
            ),
            None => format!(
                "{}/{{tenant}}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ),
        };
        TokenEndpoint { template, version }
    }

    /// The URL for `tenant`.
    pub fn url(&self, tenant: &str) -> String {
        self.template.replace("{tenant}", tenant)
    }

    /// The form field naming what the token is for: `scope` (v2) or `resource` (v1).
    pub fn audience_param<'a>(&self, scope: &'a str) -> (&'static str, &'a str) {
        if self.version == 1 {
            ("resource", scope.strip_suffix("/.default").unwrap_or(scope))
        } else {
            ("scope", scope)
        }
    }
}

/// A form value, secret or not; secrets are only exposed when the body is encoded.
pub enum FormValue<'a> {
    /// Plain value.
    Plain(&'a str),
    /// Secret value.
    Secret(&'a Secret),
}

impl EntraClient {
    /// A client with the given TLS settings; never follows redirects.
    pub fn new(tls: rustls::ClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("defender-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let local = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(EntraClient {
            http,
            local,
            retry: RetryPolicy::default(),
        })
    }

    /// POSTs a form to a token endpoint, retrying transient failures.
    pub async fn request_token(
        &self,
        url: &str,
        form: &[(&str, FormValue<'_>)],
    ) -> Result<Token, TokenError> {
        let body = encode_form(form);
        with_retries(&self.retry, || {
            self.post_once(url, body.expose().to_owned())
        })
        .await
    }

    /// GETs a managed identity endpoint (never through a proxy), retrying transient failures;
    /// 404 and 410 count as transient there (IMDS answers them while it starts).
    pub async fn get_managed_identity_token(
        &self,
        url: &str,
        header: (&str, &Secret),
    ) -> Result<Token, TokenError> {
        with_retries(&self.retry, || async {
            let sent = self
                .local
                .get(url)
                .header(header.0, header.1.expose())
                .send()
                .await;
            let (status, bytes, retry_after) = read_answer(sent).await?;
            if matches!(status.as_u16(), 404 | 410) {
                return Err(unavailable(
                    format!("the managed identity endpoint answered {}", status.as_u16()),
                    retry_after,
                ));
            }
            parse_answer(status, &bytes, retry_after, Instant::now())
        })
        .await
    }

    async fn post_once(&self, url: &str, body: String) -> Result<Token, TokenError> {
        let (status, bytes, retry_after) = self.post_raw(url, body).await?;
        parse_answer(status, &bytes, retry_after, Instant::now())
    }

    /// POSTs a form, retrying transient failures; returns the token and the (rotated) refresh
    /// token the answer carries, if any.
    pub async fn request_token_and_refresh(
        &self,
        url: &str,
        form: &[(&str, FormValue<'_>)],
    ) -> Result<(Token, Option<Secret>), TokenError> {
        let body = encode_form(form);
        with_retries(&self.retry, || async {
            let (status, bytes, retry_after) = self.post_raw(url, body.expose().to_owned()).await?;
            let token = parse_answer(status, &bytes, retry_after, Instant::now())?;
            let refresh = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("refresh_token")?.as_str().map(Secret::new));
            Ok((token, refresh))
        })
        .await
    }

    /// POSTs a form once and returns the status and JSON body (device code sign-in).
    pub async fn post_form_json(
        &self,
        url: &str,
        form: &[(&str, FormValue<'_>)],
    ) -> Result<(http::StatusCode, Value), TokenError> {
        let (status, bytes, _) = self
            .post_raw(url, encode_form(form).expose().to_owned())
            .await?;
        let json = serde_json::from_slice(&bytes).map_err(|_| {
            unavailable(
                format!("{url} answered {} without JSON", status.as_u16()),
                None,
            )
        })?;
        Ok((status, json))
    }

    async fn post_raw(
        &self,
        url: &str,
        body: String,
    ) -> Result<(http::StatusCode, bytes::Bytes, Option<Duration>), TokenError> {
        let sent = self
            .http
            .post(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        read_answer(sent).await
    }
}

/// The status, body and `Retry-After` of an identity provider's answer.
async fn read_answer(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<(http::StatusCode, bytes::Bytes, Option<Duration>), TokenError> {
    let resp = sent.map_err(|e| unavailable(describe_transport(&e), None))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(parse_retry_after);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| unavailable(describe_transport(&e), None))?;
    Ok((status, bytes, retry_after))
}

/// Encodes a form; the result is secret because it may hold one.
fn encode_form(form: &[(&str, FormValue<'_>)]) -> Secret {
    let mut out = String::new();
    for (i, (k, v)) in form.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let v = match v {
            FormValue::Plain(s) => *s,
            FormValue::Secret(s) => s.expose(),
        };
        out.push_str(&form_escape(k));
        out.push('=');
        out.push_str(&form_escape(v));
    }
    Secret::new(out)
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Why a request to the identity provider failed: its URL (without query), what kind of
/// failure it was (timeout, DNS, TLS, proxy, connect) and the cause chain, with a hint where
/// the fix is in the config. Holds no secret: the form body is never part of an error.
fn describe_transport(e: &reqwest::Error) -> String {
    let url = e.url().map_or_else(
        || "the token endpoint".to_string(),
        |u| {
            let mut u = u.clone();
            u.set_query(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        },
    );
    let chain = cause_chain(e);
    let (kind, hint) = transport_kind(e.is_timeout(), e.is_connect(), &chain);
    format!("{url}: {kind}: {chain}{hint}")
}

/// The kind of a transport failure and a hint, from its cause chain's text (hyper-util and
/// rustls tell the kinds apart only in their messages).
fn transport_kind(timeout: bool, connect: bool, chain: &str) -> (&'static str, &'static str) {
    let lower = chain.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if timeout || has(&["timed out", "deadline has elapsed"]) {
        ("timed out", "")
    } else if has(&[
        "dns error",
        "lookup address",
        "name or service not known",
        "no such host",
    ]) {
        (
            "DNS lookup failed",
            " (is the host name right, and can this machine resolve it?)",
        )
    } else if has(&["unknownissuer", "unknown issuer"]) {
        (
            "TLS: the certificate is from an unknown CA",
            " (behind a TLS-inspecting proxy? add its CA with [tls] extra_ca_file)",
        )
    } else if has(&["certificate", "tls", "handshake", "alert"]) {
        ("TLS handshake failed", "")
    } else if has(&["proxy"]) {
        ("the HTTP proxy failed", " (check HTTPS_PROXY and NO_PROXY)")
    } else if connect || has(&["connection refused", "connect"]) {
        ("could not connect", "")
    } else {
        ("the connection failed", "")
    }
}

/// The messages of `e`'s sources, outermost first, each said once.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

fn unavailable(reason: impl Into<String>, retry_after: Option<Duration>) -> TokenError {
    TokenError::Unavailable {
        reason: reason.into(),
        retry_after,
    }
}

/// Classifies a token endpoint answer.
pub fn parse_answer(
    status: http::StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    now: Instant,
) -> Result<Token, TokenError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status.is_success() {
        return json
            .as_ref()
            .and_then(|v| token_from_json(v, now))
            .ok_or_else(|| {
                unavailable(
                    "the token endpoint answered 200 without a usable token",
                    None,
                )
            });
    }
    if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(unavailable(
            format!("the token endpoint answered {}", status.as_u16()),
            retry_after,
        ));
    }
    let error = json
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let aadsts = json.as_ref().and_then(aadsts_code);
    if error == "temporarily_unavailable"
        || error.is_empty() && status == http::StatusCode::REQUEST_TIMEOUT
    {
        return Err(unavailable(
            format!("the token endpoint answered {error}"),
            retry_after,
        ));
    }
    let error = if error.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        error.to_string()
    };
    if !PERMANENT_ERRORS.contains(&error.as_str()) {
        tracing::debug!(%error, "unknown OAuth error treated as permanent");
    }
    Err(TokenError::Rejected { error, aadsts })
}

/// The AADSTS number from `error_codes`, or from the description text.
fn aadsts_code(v: &Value) -> Option<u32> {
    let from_list = v
        .get("error_codes")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    from_list.or_else(|| {
        let desc = v.get("error_description")?.as_str()?;
        let digits: String = desc
            .strip_prefix("AADSTS")?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// A number that providers send as a JSON number or as a numeric string.
fn number(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn token_from_json(v: &Value, now: Instant) -> Option<Token> {
    let access = v.get("access_token")?.as_str().filter(|s| !s.is_empty())?;
    let lifetime = match number(v, "expires_in") {
        Some(secs) => secs,
        None => {
            let epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            number(v, "expires_on")? - epoch
        }
    };
    if !lifetime.is_finite() || lifetime < 1.0 {
        return None;
    }
    let refresh_in = number(v, "refresh_in")
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(Duration::from_secs_f64);
    Token::new(
        access,
        now,
        Duration::from_secs_f64(lifetime.min(86_400.0)),
        refresh_in,
    )
}

/// `Retry-After` as seconds (possibly fractional) or an HTTP date.
pub fn parse_retry_after(v: &http::HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy is spent.
pub async fn with_retries<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<T, TokenError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TokenError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        let err = match attempt().await {
            Ok(token) => return Ok(token),
            Err(e @ (TokenError::Rejected { .. } | TokenError::LoginRequired { .. })) => {
                return Err(e);
            }
            Err(e) => e,
        };
        let TokenError::Unavailable { retry_after, .. } = &err else {
            return Err(err);
        };
        if n >= policy.attempts || retry_after.is_some_and(|r| r > policy.max_retry_after) {
            return Err(err);
        }
        let wait = retry_after.unwrap_or_else(|| backoff(policy, n));
        tracing::debug!(
            attempt = n,
            wait_ms = wait.as_millis() as u64,
            "token fetch will be retried"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Full-jitter exponential backoff for the `n`th retry.
pub fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let exp = policy
        .base
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(policy.cap);
    let millis = exp.as_millis() as u64;
    Duration::from_millis(millis / 2 + fastrand::u64(0..=millis / 2))
}

#[cfg(test)]
mod tests;
