//! Tests of streaming link rewriting.

use super::*;

const UP: &str = "https://api.security.microsoft.com";
const PROXY: &str = "http://127.0.0.1:8080/mde";

fn rewrite_in_chunks(body: &str, size: usize) -> String {
    let mut s = RewriteState::new(LinkRewriter::new(UP, PROXY));
    let mut out = Vec::new();
    for chunk in body.as_bytes().chunks(size.max(1)) {
        out.extend_from_slice(&s.push(chunk));
    }
    out.extend_from_slice(&s.finish());
    String::from_utf8(out).unwrap()
}

#[test]
fn next_and_delta_links_to_the_upstream_are_rewritten() {
    let body = format!(
        r#"{{"@odata.nextLink":"{UP}/api/alerts?$skip=50","value":[],"@odata.deltaLink" : "{UP}/api/alerts?delta=1"}}"#
    );
    let out = rewrite_in_chunks(&body, 1 << 20);
    assert_eq!(
        out,
        format!(
            r#"{{"@odata.nextLink":"{PROXY}/api/alerts?$skip=50","value":[],"@odata.deltaLink" : "{PROXY}/api/alerts?delta=1"}}"#
        )
    );
}

#[test]
fn a_link_split_across_chunks_at_every_position_is_rewritten() {
    let body = format!(r#"{{"value":[1,2,3],"@odata.nextLink":"{UP}/api/alerts?$skip=50"}}"#);
    let want = format!(r#"{{"value":[1,2,3],"@odata.nextLink":"{PROXY}/api/alerts?$skip=50"}}"#);
    for size in 1..body.len() {
        assert_eq!(rewrite_in_chunks(&body, size), want, "chunk size {size}");
    }
}

#[test]
fn other_content_is_never_altered() {
    let body = format!(
        r#"{{"value":[{{"url":"{UP}/api/alerts/1","note":"@odata.nextLink","x":"\"@odata.nextLink\": not json"}}],"@odata.context":"{UP}/api/$metadata"}}"#
    );
    for size in [1, 7, 64, 1 << 20] {
        assert_eq!(rewrite_in_chunks(&body, size), body);
    }
}

#[test]
fn links_to_other_hosts_or_lookalike_hosts_are_untouched() {
    for link in [
        "https://evil.example/api/x",
        "https://api.security.microsoft.com.evil.example/x",
        "http://api.security.microsoft.com/x",
    ] {
        let body = format!(r#"{{"@odata.nextLink":"{link}"}}"#);
        assert_eq!(rewrite_in_chunks(&body, 5), body);
    }
}

#[test]
fn escaped_slashes_are_handled() {
    let body = r#"{"@odata.nextLink":"https:\/\/api.security.microsoft.com\/api\/x?$skip=1"}"#;
    assert_eq!(
        rewrite_in_chunks(body, 3),
        r#"{"@odata.nextLink":"http:\/\/127.0.0.1:8080\/mde\/api\/x?$skip=1"}"#
    );
}

#[test]
fn the_carry_stays_bounded() {
    let rw = LinkRewriter::new(UP, PROXY);
    let max = rw.max_pattern();
    let mut s = RewriteState::new(rw);
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..100 {
        let out = s.push(&chunk);
        assert!(s.carry.len() <= max, "{}", s.carry.len());
        assert!(!out.is_empty());
    }
}

#[test]
fn location_headers_are_rewritten_only_under_the_upstream() {
    let rw = LinkRewriter::new(UP, PROXY);
    assert_eq!(
        rw.rewrite_location(&format!("{UP}/api/x?y=1")).as_deref(),
        Some("http://127.0.0.1:8080/mde/api/x?y=1")
    );
    assert_eq!(
        rw.rewrite_location("https://example.invalid/elsewhere"),
        None
    );
    assert_eq!(rw.rewrite_location(&format!("{UP}.evil.example/x")), None);
}

#[test]
fn a_body_may_hold_a_link_only_with_a_quoted_odata_key() {
    for yes in [
        &br#"{"@odata.nextLink":"https://x/api?$skip=1"}"#[..],
        br#"{"value":[],"@odata.deltaLink":"x"}"#,
        br#"{"who":"a@b.com","@odata.context":"x"}"#,
        // "May": a value that starts like a key is looked at by the rewriter, which knows.
        br#"{"x":"@odata.nextLink"}"#,
    ] {
        assert!(may_contain_link(yes), "{}", String::from_utf8_lossy(yes));
    }
    for no in [
        &b""[..],
        b"@",
        b"@odata.",
        br#"{"who":"a@b.com"}"#,
        br#"{"x":"y"}"#,
        br#"{"x":""@odat"}"#,
        br#"""#,
        br#""@"#,
    ] {
        assert!(!may_contain_link(no), "{}", String::from_utf8_lossy(no));
    }
}
