//! `expand_str`: `${VAR}`, `${VAR:-default}` and `$$` for a literal `$`. Any input either
//! expands or fails with a message; text without `$` is unchanged; escaping round-trips;
//! substituted values are never expanded again.

use defender_proxy::config::expand_str;
use proptest::prelude::*;

use crate::oracle::{ENV_SECRET, env};

/// Text rich in the characters the grammar cares about.
fn dollar_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(
                &[
                    "$", "$$", "${", "}", ":-", "{", "_", "A", "1", "é", " ", "\n"
                ][..]
            )
            .prop_map(str::to_string),
            "[A-Z_]{1,4}",
            "\\PC",
        ],
        0..16,
    )
    .prop_map(|parts| parts.concat())
}

fn escape(s: &str) -> String {
    s.replace('$', "$$")
}

fn var_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,12}"
        .prop_filter("not a variable the environment sets", |n| env(n).is_none())
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn any_input_expands_or_fails_without_panicking(s in dollar_text(), t in any::<String>()) {
        for input in [&s, &t] {
            if let Err(msg) = expand_str(input, &env) {
                prop_assert!(!msg.is_empty());
                prop_assert!(!msg.contains(ENV_SECRET), "{}", msg);
            }
        }
    }

    #[test]
    fn text_without_dollar_is_unchanged(s in "[^$]*") {
        prop_assert_eq!(expand_str(&s, &env), Ok(s));
    }

    #[test]
    fn escaped_text_round_trips(s in any::<String>()) {
        prop_assert_eq!(expand_str(&escape(&s), &env), Ok(s));
    }

    /// The value lands verbatim, even when it looks like a reference itself.
    #[test]
    fn variables_substitute_their_value_once(
        name in var_name(),
        value in prop_oneof!["\\PC+", Just("${AZURE_CLIENT_SECRET}".to_string()), Just("$$".to_string())],
        before in any::<String>(),
        after in any::<String>(),
    ) {
        let lookup = |n: &str| (n == name).then(|| value.clone());
        let input = format!("{}${{{name}}}{}", escape(&before), escape(&after));
        prop_assert_eq!(expand_str(&input, &lookup), Ok(format!("{before}{value}{after}")));
        let with_default = format!("${{{name}:-unused}}");
        prop_assert_eq!(expand_str(&with_default, &lookup), Ok(value.clone()));
    }

    /// A default applies when the variable is unset or empty, and is taken literally.
    #[test]
    fn defaults_apply_literally(name in var_name(), default in "[^}]*", empty in any::<bool>()) {
        let name = if empty { "EMPTY".to_string() } else { name };
        prop_assert_eq!(expand_str(&format!("${{{name}:-{default}}}"), &env), Ok(default));
    }

    #[test]
    fn missing_variables_are_named(name in var_name(), before in "[^$]*") {
        let msg = expand_str(&format!("{before}${{{name}}}"), &env).unwrap_err();
        prop_assert!(msg.contains(&name), "{}", msg);
    }

    /// A `${` without its `}` is an error, never a partial expansion.
    #[test]
    fn unterminated_references_fail(before in "[^$]*", rest in "[^}]*") {
        let input = format!("{before}${{{rest}");
        prop_assert!(expand_str(&input, &env).is_err());
    }

    /// A malformed reference is refused without echoing what is inside the braces: the
    /// value may be a secret that happens to contain `${`.
    #[test]
    fn malformed_references_are_not_echoed(inner in "[0-9~. -][A-Za-z0-9~. -]{5,20}") {
        let msg = expand_str(&format!("pw${{{inner}}}"), &env).unwrap_err();
        prop_assert!(!msg.contains(&inner), "{}", msg);
    }
}
