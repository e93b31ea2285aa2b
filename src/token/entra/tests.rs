//! Tests of the token endpoint exchange.

use super::*;
use http::StatusCode;

fn now() -> Instant {
    Instant::now()
}

#[test]
fn v2_answers_with_numbers_parse() {
    let body =
        br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"abc"}"#;
    let t = parse_answer(StatusCode::OK, body, None, now()).unwrap();
    assert!(t.expires_at - now() > Duration::from_secs(3590));
    assert_eq!(t.header(), "Bearer abc");
}

#[test]
fn v1_answers_with_strings_parse() {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1200;
    let body = format!(
        r#"{{"token_type":"Bearer","expires_in":"1200","expires_on":"{epoch}","resource":"r","access_token":"abc"}}"#
    );
    let t = parse_answer(StatusCode::OK, body.as_bytes(), None, now()).unwrap();
    let left = t.expires_at - now();
    assert!(left > Duration::from_secs(1190) && left <= Duration::from_secs(1200));
}

#[test]
fn expires_on_alone_is_enough() {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let body = format!(r#"{{"access_token":"abc","expires_on":{epoch}}}"#);
    let t = parse_answer(StatusCode::OK, body.as_bytes(), None, now()).unwrap();
    assert!(t.expires_at - now() > Duration::from_secs(590));
}

#[test]
fn refresh_in_is_read_as_number_or_string() {
    for body in [
        r#"{"access_token":"a","expires_in":3600,"refresh_in":300}"#,
        r#"{"access_token":"a","expires_in":"3600","refresh_in":"300"}"#,
    ] {
        let n = now();
        let t = parse_answer(StatusCode::OK, body.as_bytes(), None, n).unwrap();
        assert_eq!(t.refresh_at - n, Duration::from_secs(300));
    }
}

#[test]
fn garbled_or_empty_200_is_transient() {
    for body in [
        &b"<html>oops</html>"[..],
        b"",
        br#"{"expires_in":3600}"#,
        br#"{"access_token":"a"}"#,
    ] {
        let e = parse_answer(StatusCode::OK, body, None, now()).unwrap_err();
        assert!(e.is_transient(), "{body:?}");
    }
}

#[test]
fn invalid_client_is_permanent_with_its_code() {
    let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#;
    let e = parse_answer(StatusCode::UNAUTHORIZED, body, None, now()).unwrap_err();
    assert_eq!(
        e,
        TokenError::Rejected {
            error: "invalid_client".into(),
            aadsts: Some(7000215)
        }
    );
}

#[test]
fn aadsts_code_is_read_from_the_description_when_the_list_is_missing() {
    let body =
        br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#;
    let e = parse_answer(StatusCode::BAD_REQUEST, body, None, now()).unwrap_err();
    assert_eq!(
        e,
        TokenError::Rejected {
            error: "invalid_request".into(),
            aadsts: Some(90002)
        }
    );
}

#[test]
fn throttling_and_server_errors_are_transient_with_retry_after() {
    let e = parse_answer(
        StatusCode::TOO_MANY_REQUESTS,
        b"",
        Some(Duration::from_secs(3)),
        now(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        TokenError::Unavailable {
            reason: "the token endpoint answered 429".into(),
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert!(
        parse_answer(StatusCode::BAD_GATEWAY, b"", None, now())
            .unwrap_err()
            .is_transient()
    );
    let body = br#"{"error":"temporarily_unavailable"}"#;
    assert!(
        parse_answer(StatusCode::BAD_REQUEST, body, None, now())
            .unwrap_err()
            .is_transient()
    );
}

#[test]
fn retry_after_parses_seconds_fractions_and_dates() {
    let v = |s: &str| parse_retry_after(&http::HeaderValue::from_str(s).unwrap());
    assert_eq!(v("7"), Some(Duration::from_secs(7)));
    assert_eq!(v("1.5"), Some(Duration::from_millis(1500)));
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    let d = v(&date).unwrap();
    assert!(
        d > Duration::from_secs(27) && d <= Duration::from_secs(30),
        "{d:?}"
    );
    assert_eq!(v("nonsense"), None);
    assert_eq!(v("-1"), None);
}

#[test]
fn v1_endpoint_sends_resource_without_default_suffix() {
    let e = TokenEndpoint::new("https://login.microsoftonline.com/", 1, None);
    assert_eq!(
        e.url("t1"),
        "https://login.microsoftonline.com/t1/oauth2/token"
    );
    assert_eq!(
        e.audience_param("https://api.security.microsoft.com/.default"),
        ("resource", "https://api.security.microsoft.com")
    );
    let e = TokenEndpoint::new("https://login.microsoftonline.com", 2, None);
    assert_eq!(
        e.url("t1"),
        "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
    );
    let e = TokenEndpoint::new("x", 2, Some("http://127.0.0.1:1/{tenant}/token"));
    assert_eq!(e.url("t2"), "http://127.0.0.1:1/t2/token");
}

#[test]
fn form_encoding_escapes_reserved_characters() {
    let secret = Secret::new("a+b&c=d é");
    let body = encode_form(&[
        ("grant_type", FormValue::Plain("client_credentials")),
        ("client_secret", FormValue::Secret(&secret)),
    ]);
    assert_eq!(
        body.expose(),
        "grant_type=client_credentials&client_secret=a%2Bb%26c%3Dd+%C3%A9"
    );
    assert_eq!(format!("{body:?}"), "***");
}

#[test]
fn backoff_is_capped_and_jittered() {
    let p = RetryPolicy::default();
    for n in 1..20 {
        let b = backoff(&p, n);
        assert!(b <= p.cap, "{n}: {b:?}");
    }
    assert!(backoff(&p, 1) >= Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_on_permanent_errors_and_succeed_after_transient_ones() {
    let policy = RetryPolicy::default();
    let mut calls = 0;
    let r = with_retries::<Token, _, _>(&policy, || {
        calls += 1;
        let c = calls;
        async move {
            if c < 3 {
                Err(unavailable("503", None))
            } else {
                Token::new("t", Instant::now(), Duration::from_secs(60), None)
                    .ok_or_else(|| unavailable("x", None))
            }
        }
    })
    .await;
    assert!(r.is_ok());
    assert_eq!(calls, 3);

    let mut calls = 0;
    let r = with_retries::<Token, _, _>(&policy, || {
        calls += 1;
        async {
            Err(TokenError::Rejected {
                error: "invalid_client".into(),
                aadsts: None,
            })
        }
    })
    .await;
    assert!(r.is_err());
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_ends_the_retries() {
    let policy = RetryPolicy::default();
    let mut calls = 0;
    let r = with_retries::<Token, _, _>(&policy, || {
        calls += 1;
        async { Err(unavailable("429", Some(Duration::from_secs(60)))) }
    })
    .await;
    assert!(r.unwrap_err().is_transient());
    assert_eq!(calls, 1);
}

#[test]
fn transport_failures_are_told_apart_with_a_hint_where_the_config_helps() {
    let kind = |chain: &str| transport_kind(false, true, chain);
    assert_eq!(
        kind("client error (Connect): dns error: failed to lookup address information").0,
        "DNS lookup failed"
    );
    let (tls, hint) = kind("client error (Connect): invalid peer certificate: UnknownIssuer");
    assert!(tls.contains("unknown CA") && hint.contains("extra_ca_file"));
    assert_eq!(
        kind("client error (Connect): received fatal alert: HandshakeFailure").0,
        "TLS handshake failed"
    );
    assert_eq!(
        kind("client error (Connect): proxy answered 407").0,
        "the HTTP proxy failed"
    );
    assert_eq!(
        kind("client error (Connect): Connection refused (os error 111)").0,
        "could not connect"
    );
    assert_eq!(
        transport_kind(true, false, "operation timed out").0,
        "timed out"
    );
}
