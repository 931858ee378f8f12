//! Parsing request bodies: one JSON document, or JSON Lines batches.
//!
//! Error messages keep serde's position and field names but replace quoted
//! values with `…`, because a mistyped line can carry personal data (a name,
//! an Individual Number in the wrong field) and error messages end up in
//! reports and logs.

use crate::InvalidInput;
use serde::de::DeserializeOwned;

/// Parses one JSON document. Errors carry no input values.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, InvalidInput> {
    serde_json::from_slice(body).map_err(|e| InvalidInput::new("body", redact(&e.to_string())))
}

/// Parses a JSON Lines body: one JSON document per line, `\n` or `\r\n`
/// separated. Returns `(line number, result)` for every non-blank line, line
/// numbers 1-based and counting blank lines, so that reports point at the
/// line a person sees in an editor. Never panics; a line that is not UTF-8
/// is reported without echoing it.
pub fn parse_jsonl<T: DeserializeOwned>(body: &[u8]) -> Vec<(u64, Result<T, InvalidInput>)> {
    let mut out = Vec::new();
    for (index, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line_no = index as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match std::str::from_utf8(raw) {
            Ok(text) => serde_json::from_str::<T>(text)
                .map_err(|e| InvalidInput::new("line", line_reason(&e))),
            Err(_) => Err(InvalidInput::new("line", "the line is not valid UTF-8")),
        };
        out.push((line_no, parsed));
    }
    out
}

/// A line's error without values: serde's "at line 1 column C" (a line of
/// JSON Lines is one line) becomes "(column C)", so the only line number a
/// person reads is the line of the file, which the caller reports.
fn line_reason(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let text = redact(message.strip_suffix(&suffix).unwrap_or(&message));
    if e.line() == 0 {
        text
    } else {
        format!("{text} (column {})", e.column())
    }
}

/// Replaces every `"…"` segment with `"…"` and every `` `…` `` segment that
/// is not a snake_case name (field, variant) with `` `…` ``. The first
/// backtick segment is what the line held; it is kept only where serde says
/// it is a field name (`unknown field`, `missing field`, `duplicate field`):
/// in `unknown variant `tanaka`, expected one of `male`, …` it is the value.
pub(crate) fn redact(message: &str) -> String {
    let first_is_field = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| message.starts_with(p));
    let mut backticks = 0;
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let inner = &after[..end];
                let ours = quote == '`' && (backticks > 0 || first_is_field);
                if quote == '`' {
                    backticks += 1;
                }
                let is_name = ours
                    && inner.starts_with(|c: char| c.is_ascii_lowercase())
                    && inner.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
                    });
                out.push_str(if is_name { inner } else { "…" });
                out.push(quote);
                rest = &after[end + 1..];
            }
            None => {
                // An unterminated quote: drop the tail rather than risk echoing it.
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Line {
        name: String,
    }

    #[test]
    fn lines() {
        let body = b"{\"name\":\"a\"}\r\n\n  \n{\"name\":7}\n\xff\xfe secret\n{\"nam\":\"b\"}";
        let out = parse_jsonl::<Line>(body);
        let numbers: Vec<u64> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![1, 4, 5, 6]);
        assert_eq!(out[0].1, Ok(Line { name: "a".into() }));
        assert!(out[1].1.is_err());
        let utf8 = out[2].1.as_ref().unwrap_err();
        assert!(!utf8.reason.contains("secret"));
        let unknown = out[3].1.as_ref().unwrap_err();
        assert!(unknown.reason.contains("`nam`"), "{unknown}");
        assert!(parse_jsonl::<Line>(b"").is_empty());
        assert!(parse_jsonl::<Line>(b"\n\n").is_empty());
    }

    #[test]
    fn a_line_error_names_the_rule_and_the_column_not_a_json_line() {
        #[derive(Debug, Deserialize)]
        #[serde(try_from = "Line")]
        #[allow(dead_code)]
        struct NonEmpty(String);
        impl TryFrom<Line> for NonEmpty {
            type Error = InvalidInput;
            fn try_from(l: Line) -> Result<Self, InvalidInput> {
                if l.name.is_empty() {
                    return Err(InvalidInput::new("name", "must not be empty"));
                }
                Ok(NonEmpty(l.name))
            }
        }
        let out = parse_jsonl::<NonEmpty>(b"{\"name\":\"a\"}\n\n{\"name\":\"\"}");
        assert_eq!(out[1].0, 3);
        let e = out[1].1.as_ref().unwrap_err();
        assert!(e.reason.starts_with("name: must not be empty"), "{e}");
        assert!(!e.reason.contains("line "), "{e}");
        // serde's own errors keep their column within the line.
        let out = parse_jsonl::<Line>(b"\n{\"name\": 7}");
        let e = out[0].1.as_ref().unwrap_err();
        assert!(
            e.reason.contains("(column 10)") && !e.reason.contains("line "),
            "{e}"
        );
    }

    #[test]
    fn values_are_not_echoed() {
        let e = parse_json::<Line>(br#"{"name": 123456789018}"#).unwrap_err();
        assert!(!e.reason.contains("123456789018"), "{e}");
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum Sex {
            #[serde(rename = "male")]
            Male,
        }
        let e = parse_json::<Sex>(br#""Yamada Taro""#).unwrap_err();
        assert!(!e.reason.contains("Yamada"), "{e}");
        // A lower-case value in the wrong column, on a line of a batch.
        let out = parse_jsonl::<Sex>(br#""tanaka""#);
        let wrong = out[0].1.as_ref().unwrap_err();
        assert!(!wrong.reason.contains("tanaka"), "{wrong}");
        assert!(wrong.reason.contains("`male`"), "{wrong}");
        assert_eq!(redact("a `b` `12` \"c\" `x"), "a `…` `…` \"…\" `…");
        assert_eq!(
            redact("unknown field `nam`, expected `name`"),
            "unknown field `nam`, expected `name`"
        );
    }
}
