//! A minimal OData `$filter`: `field op value` clauses joined by `and`.
//!
//! Operators `eq ne gt ge lt le`; values quoted (`'Active'`) or bare (`5`,
//! `2024-01-01T00:00:00Z`). Enough to catch a proxy that mangles the query string.

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed `$filter`; the empty filter matches everything.
#[derive(Debug, Default)]
pub(super) struct Filter(Vec<Clause>);

#[derive(Debug)]
struct Clause {
    field: String,
    op: Op,
    value: String,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Filter {
    /// Parses `text`; the error names what could not be understood.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokenize(text)?;
        let mut rest = tokens.as_slice();
        let mut clauses = Vec::new();
        while !rest.is_empty() {
            let [field, op, value, tail @ ..] = rest else {
                return Err(format!("incomplete clause in '{text}'"));
            };
            let op = parse_op(op).ok_or_else(|| format!("unsupported operator '{op}'"))?;
            clauses.push(Clause {
                field: field.clone(),
                op,
                value: value.clone(),
            });
            rest = match tail {
                [] => tail,
                [and, more @ ..] if and.eq_ignore_ascii_case("and") && !more.is_empty() => more,
                _ => return Err(format!("expected 'and' between clauses in '{text}'")),
            };
        }
        Ok(Filter(clauses))
    }

    /// Checks that every clause names one of `allowed` (case-insensitively, as Defender's
    /// OData does) and spells it as `allowed` does; the error names the first that does not.
    pub fn check_fields(&mut self, allowed: &[&str]) -> Result<(), String> {
        for clause in &mut self.0 {
            let Some(name) = allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&clause.field))
            else {
                return Err(format!(
                    "The property '{}' cannot be used in the $filter query option.",
                    clause.field
                ));
            };
            clause.field = (*name).to_owned();
        }
        Ok(())
    }

    pub fn matches(&self, item: &Value) -> bool {
        self.0.iter().all(|clause| clause.matches(item))
    }
}

impl Clause {
    fn matches(&self, item: &Value) -> bool {
        let actual = match item.get(&self.field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "null".to_owned(),
            Some(other) => other.to_string(),
        };
        let ordering = compare(&actual, &self.value);
        match self.op {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
        }
    }
}

/// Numbers numerically, everything else as case-insensitive text (ISO times sort as text).
fn compare(actual: &str, wanted: &str) -> Ordering {
    match (actual.parse::<f64>(), wanted.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
        _ => actual
            .to_ascii_lowercase()
            .cmp(&wanted.to_ascii_lowercase()),
    }
}

fn parse_op(op: &str) -> Option<Op> {
    let op = match op.to_ascii_lowercase().as_str() {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        "lt" => Op::Lt,
        "le" => Op::Le,
        _ => return None,
    };
    Some(op)
}

/// Whitespace-separated words; a quoted string (with `''` for a quote) is one word.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            tokens.push(
                quoted(&mut chars).ok_or_else(|| format!("unterminated string in '{text}'"))?,
            );
        } else {
            let mut word = String::new();
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
            tokens.push(word);
        }
    }
    Ok(tokens)
}

fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut value = String::new();
    loop {
        match chars.next()? {
            '\'' if chars.next_if_eq(&'\'').is_some() => value.push('\''),
            '\'' => return Some(value),
            c => value.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_and_ranges_combine_with_and() {
        let item =
            json!({"status": "Active", "riskScore": 5, "createdTime": "2024-06-01T00:00:00Z"});
        let yes = Filter::parse(
            "status eq 'active' and riskScore ge 5 and createdTime gt 2024-01-01T00:00:00Z",
        );
        assert!(yes.expect("parses").matches(&item));
        let no = Filter::parse("status eq 'Resolved'").expect("parses");
        assert!(!no.matches(&item));
        assert!(
            Filter::parse("assignedTo eq null")
                .expect("parses")
                .matches(&item)
        );
    }

    #[test]
    fn garbled_filters_are_rejected() {
        assert!(Filter::parse("status%20eq%20'Active'").is_err());
        assert!(Filter::parse("status eq").is_err());
        assert!(Filter::parse("status like 'x'").is_err());
        assert!(Filter::parse("status eq 'x' and").is_err());
        assert!(Filter::parse("status eq 'x' or a eq 'b'").is_err());
        assert!(Filter::parse("name eq 'it''s").is_err());
        assert!(
            Filter::parse("")
                .expect("empty is fine")
                .matches(&json!({}))
        );
    }
}
