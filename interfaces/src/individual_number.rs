//! The Individual Number (個人番号, "My Number").
//!
//! It enters the broker only in person registrations (R3) and never leaves it
//! (R4). The type makes accidental disclosure hard: `Debug` and `Display` are
//! masked, error messages never contain the digits, the digits are wiped from
//! memory when the value is dropped, and the only way to read them is the
//! explicitly named [`IndividualNumber::expose`].

use crate::InvalidInput;
use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// Why a string is not an Individual Number. Messages never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IndividualNumberError {
    /// Not exactly 12 characters (or 11 for [`check_digit`]).
    #[error("must be exactly 12 digits")]
    WrongLength,
    /// A character other than the ASCII digits 0-9 (full-width digits included).
    #[error("must contain only the ASCII digits 0-9")]
    NonDigit,
    /// The last digit is not the check digit of the first eleven.
    #[error("the check digit does not match")]
    BadCheckDigit,
}

impl From<IndividualNumberError> for InvalidInput {
    fn from(e: IndividualNumberError) -> Self {
        InvalidInput::new("individual_number", e.to_string())
    }
}

/// The check digit of the first eleven digits of an Individual Number.
///
/// The algorithm of 行政手続における特定の個人を識別するための番号の利用等に関する
/// 法律施行令 第八条 and its 総務省令: with P_n the n-th digit counted from the
/// right of the eleven (n = 1..11) and Q_n = n + 1 for n ≤ 6, n − 5 for n ≥ 7,
/// r = Σ P_n·Q_n mod 11; the check digit is 0 when r ≤ 1, else 11 − r.
pub fn check_digit(first11: &str) -> Result<u8, IndividualNumberError> {
    let bytes = first11.as_bytes();
    if !bytes.iter().all(u8::is_ascii_digit) {
        return Err(IndividualNumberError::NonDigit);
    }
    if bytes.len() != 11 {
        return Err(IndividualNumberError::WrongLength);
    }
    let sum: u32 = bytes
        .iter()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let n = i as u32 + 1;
            let q = if n <= 6 { n + 1 } else { n - 5 };
            u32::from(b - b'0') * q
        })
        .sum();
    let r = sum % 11;
    Ok(if r <= 1 { 0 } else { (11 - r) as u8 })
}

/// A validated Individual Number: 12 ASCII digits whose last digit is the
/// check digit of the first eleven. No normalisation is done (full-width
/// digits, spaces and hyphens are refused), so a number has one spelling.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IndividualNumber(String);

impl IndividualNumber {
    /// Validates 12 digits with their check digit.
    pub fn new(s: &str) -> Result<Self, IndividualNumberError> {
        let bytes = s.as_bytes();
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(IndividualNumberError::NonDigit);
        }
        if bytes.len() != 12 {
            return Err(IndividualNumberError::WrongLength);
        }
        let expected = check_digit(&s[..11])?;
        if bytes[11] - b'0' != expected {
            return Err(IndividualNumberError::BadCheckDigit);
        }
        Ok(Self(s.to_string()))
    }

    /// The twelve digits. Named so that every read is visible in review.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for IndividualNumber {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for IndividualNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndividualNumber(****)")
    }
}

impl std::fmt::Display for IndividualNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("************")
    }
}

impl std::str::FromStr for IndividualNumber {
    type Err = IndividualNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for IndividualNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A visitor that overrides every non-string case so that serde's default
/// "invalid type: integer `123…`" message, which would echo a number sent as
/// a JSON number, is never produced.
struct NumberVisitor;

const EXPECTING: &str = "a string of 12 digits";

impl Visitor<'_> for NumberVisitor {
    type Value = IndividualNumber;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        IndividualNumber::new(v).map_err(|e| E::custom(format!("individual_number: {e}")))
    }

    fn visit_string<E: de::Error>(self, mut v: String) -> Result<Self::Value, E> {
        let r = self.visit_str(&v);
        v.zeroize();
        r
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(E::custom(
            "individual_number: must be a JSON string of 12 digits, not a number",
        ))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        self.visit_u64(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
        self.visit_u64(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
        self.visit_u64(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        self.visit_u64(0)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Err(E::custom(
            "individual_number: must be a JSON string of 12 digits",
        ))
    }
}

impl<'de> Deserialize<'de> for IndividualNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }
}

impl JsonSchema for IndividualNumber {
    fn schema_name() -> String {
        "IndividualNumber".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema(
            "Individual Number (個人番号): 12 ASCII digits, the last being the check digit of the first eleven",
            "^[0-9]{12}$",
        )
    }
}

/// The byte ranges of every valid Individual Number in `text`, however a
/// person wrote it: twelve digits, groups of four joined by one separator
/// (`1234-5678-9018`, `1234 5678 9018`), ASCII or full-width digits. Runs
/// of digits that are not a valid number (no check digit) are not found.
pub fn spans_in(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut offset = 0;
    let mut rest = text;
    while let Some(start) = rest.find(is_digit) {
        let (end, groups) = digit_groups(&rest[start..]);
        let digits: Vec<String> = groups
            .iter()
            .map(|&(a, b)| ascii_digits(&rest[start + a..start + b]))
            .collect();
        let valid = |s: &str| IndividualNumber::new(s).is_ok();
        let mut g = 0;
        while g < groups.len() {
            let three = g + 2 < groups.len()
                && digits[g..g + 3].iter().all(|d| d.len() == 4)
                && valid(&digits[g..g + 3].concat());
            let last = if three { g + 2 } else { g };
            if three || valid(&digits[g]) {
                let base = offset + start;
                found.push(base + groups[g].0..base + groups[last].1);
            }
            g = last + 1;
        }
        offset += start + end;
        rest = &rest[start + end..];
    }
    found
}

/// `text` with every valid Individual Number in it ([`spans_in`]) replaced
/// by `placeholder`.
pub fn replace_in(text: &str, placeholder: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut written = 0;
    for span in spans_in(text) {
        out.push_str(&text[written..span.start]);
        out.push_str(placeholder);
        written = span.end;
    }
    out.push_str(&text[written..]);
    out
}

/// An ASCII or full-width digit.
fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

/// A separator between the groups of a number as people write it.
fn is_separator(c: char) -> bool {
    matches!(c, '-' | ' ' | '‐' | '－' | '　' | 'ー')
}

/// The length of the run of digit groups at the start of `text` (groups
/// joined by single separators), and each group's byte range in it.
fn digit_groups(text: &str) -> (usize, Vec<(usize, usize)>) {
    let mut groups = Vec::new();
    let mut group_start = 0;
    let mut end = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if is_digit(c) {
            end = i + c.len_utf8();
            continue;
        }
        // A separator counts only between two digits.
        let next_is_digit = chars.peek().is_some_and(|(_, n)| is_digit(*n));
        if is_separator(c) && end == i && next_is_digit {
            groups.push((group_start, end));
            group_start = i + c.len_utf8();
            continue;
        }
        break;
    }
    groups.push((group_start, end));
    (end, groups)
}

/// The ASCII digits of a group, full-width ones folded.
fn ascii_digits(group: &str) -> String {
    group
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_digit(u32::from(c) - u32::from('０'), 10).unwrap_or(c),
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_check(first11: &str) -> String {
        format!("{first11}{}", check_digit(first11).unwrap())
    }

    #[test]
    fn known_number() {
        // The example number published with the algorithm.
        assert_eq!(check_digit("12345678901"), Ok(8));
        assert!(IndividualNumber::new("123456789018").is_ok());
        assert_eq!(
            IndividualNumber::new("123456789017"),
            Err(IndividualNumberError::BadCheckDigit)
        );
    }

    #[test]
    fn remainder_zero_and_one_give_zero() {
        // r = 0: all zeros.
        assert_eq!(check_digit("00000000000"), Ok(0));
        // r = 1: P_1 = 5 gives 5·2 = 10, plus P_7 = 1 gives 1·2 → 12 ≡ 1.
        assert_eq!(check_digit("00001000005"), Ok(0));
    }

    #[test]
    fn every_wrong_check_digit_is_refused() {
        let good = with_check("98765432109");
        let last = good.as_bytes()[11] - b'0';
        for d in 0..10u8 {
            let candidate = format!("{}{}", &good[..11], d);
            assert_eq!(
                IndividualNumber::new(&candidate).is_ok(),
                d == last,
                "{candidate}"
            );
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(
            IndividualNumber::new("12345678901"),
            Err(IndividualNumberError::WrongLength)
        );
        assert_eq!(
            IndividualNumber::new("1234567890180"),
            Err(IndividualNumberError::WrongLength)
        );
        assert_eq!(
            IndividualNumber::new("12345678901a"),
            Err(IndividualNumberError::NonDigit)
        );
        assert_eq!(
            IndividualNumber::new("１２３４５６７８９０１８"),
            Err(IndividualNumberError::NonDigit)
        );
        assert_eq!(
            IndividualNumber::new("1234-5678-9018"),
            Err(IndividualNumberError::NonDigit)
        );
        assert_eq!(
            IndividualNumber::new(""),
            Err(IndividualNumberError::WrongLength)
        );
        assert_eq!(
            check_digit("1234567890"),
            Err(IndividualNumberError::WrongLength)
        );
    }

    #[test]
    fn never_shown() {
        let n = IndividualNumber::new("123456789018").unwrap();
        assert!(!format!("{n:?}").contains("123456789018"));
        assert!(!format!("{n}").contains("1234"));
        assert_eq!(n.expose(), "123456789018");
        let err = serde_json::from_str::<IndividualNumber>("123456789018").unwrap_err();
        assert!(!err.to_string().contains("123456789018"), "{err}");
        let err = serde_json::from_str::<IndividualNumber>("\"123456789017\"").unwrap_err();
        assert!(!err.to_string().contains("123456789017"), "{err}");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"123456789018\"");
    }
}
