use super::*;

#[test]
fn a_made_request_id_is_the_uuid_crates_v4_text_of_the_same_bytes() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut inputs: Vec<[u8; 16]> = vec![[0; 16], [0xff; 16]];
    inputs.extend((0..10_000).map(|_| rng.u128(..).to_le_bytes()));
    for random in inputs {
        let ours = uuid_v4_text(random);
        let theirs = uuid::Builder::from_random_bytes(random)
            .into_uuid()
            .hyphenated()
            .to_string();
        assert_eq!(std::str::from_utf8(&ours).unwrap(), theirs);
        let parsed = uuid::Uuid::try_parse_ascii(&ours).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    }
}

#[test]
fn a_sane_client_request_id_is_kept_and_any_other_replaced() {
    let kept = request_id(Some(HeaderValue::from_static("my-script_run.42")));
    assert_eq!(kept.as_str(), "my-script_run.42");
    assert_eq!(kept.to_header_value(), "my-script_run.42");
    for bad in ["", "with space", "semi;colon", &"x".repeat(129)] {
        let made = request_id(Some(HeaderValue::from_str(bad).unwrap()));
        assert_eq!(made.as_bytes().len(), 36, "{bad:?}");
        assert!(uuid::Uuid::try_parse(made.as_str()).is_ok(), "{bad:?}");
        assert_eq!(made.to_header_value().as_bytes(), made.as_bytes());
    }
    let a = request_id(None);
    let b = request_id(None);
    assert_ne!(a.as_str(), b.as_str());
}
