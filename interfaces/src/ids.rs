//! Identifiers: flows, procedures, items, person codes, queries, permits,
//! signing keys and insured branch numbers.
//!
//! Each is a validated newtype over its text form. The character sets are
//! deliberately narrow (ASCII, no spaces, no NUL) so that ids can be used in
//! URLs, file names, log lines and the NUL-separated envelope context without
//! escaping.

use crate::InvalidInput;
use rand_core::{OsRng, RngCore};
use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Defines a string newtype whose constructor validates, with serde via
/// `String`, `Display`, `FromStr`, `AsRef<str>` and a JSON Schema that states
/// the same rule as the constructor.
macro_rules! string_id {
    (
        $(#[$meta:meta])*
        $name:ident, field = $field:literal, pattern = $pattern:literal,
        rule = $rule:literal, check = $check:expr
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The rule this id follows, as a regular expression.
            pub const PATTERN: &'static str = $pattern;

            /// Validates and wraps the id.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
                let s = s.into();
                let check: fn(&str) -> bool = $check;
                if check(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidInput::new($field, $rule))
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> String {
                stringify!($name).to_string()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                crate::schema::string_schema($rule, $pattern)
            }
        }
    };
}

fn len_between(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
}

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

string_id! {
    /// A flow id: the row of the law's table an authorised flow implements
    /// (e.g. `row-87.2`). 1–64 characters of `A-Z a-z 0-9 . _ -`.
    FlowId, field = "flow_id", pattern = "^[A-Za-z0-9._-]{1,64}$",
    rule = "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
    check = |s| len_between(s, 1, 64) && s.chars().all(is_code_char)
}

string_id! {
    /// A procedure code (事務手続), e.g. `premium.assessment`.
    /// 1–64 characters of `A-Z a-z 0-9 . _ -`.
    ProcedureCode, field = "procedure", pattern = "^[A-Za-z0-9._-]{1,64}$",
    rule = "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
    check = |s| len_between(s, 1, 64) && s.chars().all(is_code_char)
}

string_id! {
    /// A data item code, e.g. `local_tax.income`. 1–64 characters of
    /// `a-z 0-9 . _`, starting with a letter; lowercase only so that two
    /// spellings can never name one item.
    ItemCode, field = "item", pattern = "^[a-z][a-z0-9._]{0,63}$",
    rule = "must be 1-64 characters of a-z, 0-9, '.' and '_', starting with a letter",
    check = |s| len_between(s, 1, 64)
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
}

string_id! {
    /// A per-org person code (機関別符号): the only way an org names a person.
    /// Opaque, 8–64 characters of `A-Z a-z 0-9 _ -`. Codes of two orgs for the
    /// same person are unrelated; only the broker can map one to the other.
    PersonCode, field = "person", pattern = "^[A-Za-z0-9_-]{8,64}$",
    rule = "must be 8-64 characters of A-Z, a-z, 0-9, '_' and '-'",
    check = |s| len_between(s, 8, 64) && s.chars().all(is_token_char)
}

string_id! {
    /// A query id, assigned by the broker (`q_` + 26 base32 characters).
    /// Accepted on input as 1–64 characters of `A-Z a-z 0-9 _ -`.
    QueryId, field = "query_id", pattern = "^[A-Za-z0-9_-]{1,64}$",
    rule = "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
    check = |s| len_between(s, 1, 64) && s.chars().all(is_token_char)
}

string_id! {
    /// A permit id, assigned by the broker (`p_` + 26 base32 characters).
    /// Accepted on input as 1–64 characters of `A-Z a-z 0-9 _ -`.
    PermitId, field = "permit_id", pattern = "^[A-Za-z0-9_-]{1,64}$",
    rule = "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
    check = |s| len_between(s, 1, 64) && s.chars().all(is_token_char)
}

string_id! {
    /// The id of a permit-signing key, as listed by `GET /v1/permit-keys`.
    /// 1–64 characters of `A-Z a-z 0-9 . _ -`.
    KeyId, field = "key_id", pattern = "^[A-Za-z0-9._-]{1,64}$",
    rule = "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
    check = |s| len_between(s, 1, 64) && s.chars().all(is_code_char)
}

/// 48 bits of Unix milliseconds then 80 random bits (the UUIDv7 layout), as
/// 26 lowercase base32 characters (RFC 4648 alphabet, no padding).
///
/// The time prefix keeps ids made close together close in a B-tree, so an
/// index on them grows at a few hot pages instead of dirtying a random page
/// per insert; 80 random bits keep them unguessable. URL- and case-safe.
fn time_ordered_suffix() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    OsRng.fill_bytes(&mut bytes[6..]);
    base32_lower(&bytes)
}

/// Lowercase RFC 4648 base32 without padding.
pub(crate) fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

impl QueryId {
    /// A fresh query id: `q_` followed by 26 base32 characters, a
    /// millisecond time prefix then 80 random bits.
    pub fn random() -> Self {
        Self(format!("q_{}", time_ordered_suffix()))
    }
}

impl PermitId {
    /// A fresh permit id: `p_` followed by 26 base32 characters, a
    /// millisecond time prefix then 80 random bits.
    pub fn random() -> Self {
        Self(format!("p_{}", time_ordered_suffix()))
    }
}

/// The insured branch number (被保険者枝番) the broker assigns to a person
/// within one insurer: exactly 8 ASCII digits, `00000001`–`99999999`.
///
/// Eight digits leave ten times the headroom of the largest union (~10
/// million insured). It is text on the wire because the leading zeros are part
/// of the number. `00000000` is reserved (never assigned) so that a zeroed
/// field can never pass for a real number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BranchNumber(u32);

impl BranchNumber {
    /// The largest branch number.
    pub const MAX: u32 = 99_999_999;
    const RULE: &'static str = "must be exactly 8 digits, 00000001-99999999";

    /// A branch number from its value (1..=99,999,999).
    pub fn from_u32(n: u32) -> Result<Self, InvalidInput> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(InvalidInput::new("branch_number", Self::RULE))
        }
    }

    /// Parses the 8-digit text form.
    pub fn new(s: &str) -> Result<Self, InvalidInput> {
        if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
            let n = s
                .bytes()
                .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
            Self::from_u32(n)
        } else {
            Err(InvalidInput::new("branch_number", Self::RULE))
        }
    }

    /// The numeric value.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for BranchNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08}", self.0)
    }
}

impl std::str::FromStr for BranchNumber {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for BranchNumber {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<BranchNumber> for String {
    fn from(b: BranchNumber) -> String {
        b.to_string()
    }
}

impl JsonSchema for BranchNumber {
    fn schema_name() -> String {
        "BranchNumber".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema(
            "Insured branch number (被保険者枝番): exactly 8 digits, 00000001-99999999",
            "^(?!00000000)[0-9]{8}$",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(FlowId::new("row-87.2").is_ok());
        assert!(FlowId::new("").is_err());
        assert!(FlowId::new("a b").is_err());
        assert!(FlowId::new("x".repeat(65)).is_err());
        assert!(ItemCode::new("local_tax.income").is_ok());
        assert!(ItemCode::new("Local_tax").is_err());
        assert!(ItemCode::new("1tax").is_err());
        assert!(ItemCode::new("tax-income").is_err());
        assert!(PersonCode::new("abcdefg").is_err());
        assert!(PersonCode::new("abcd_EF-1").is_ok());
        assert!(PersonCode::new("abcd.EF-1").is_err());
        assert!(KeyId::new("permit-2025.01").is_ok());
        assert!(serde_json::from_str::<ItemCode>("\"BAD\"").is_err());
    }

    #[test]
    fn random_ids() {
        let q = QueryId::random();
        assert!(q.as_str().starts_with("q_"));
        assert_eq!(q.as_str().len(), 28);
        assert!(QueryId::new(q.as_str()).is_ok());
        assert!(q.as_str()[2..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        let p = PermitId::random();
        assert!(p.as_str().starts_with("p_"));
        assert_ne!(PermitId::random(), p);
    }

    #[test]
    fn ids_made_together_share_their_time_prefix_but_not_their_random_part() {
        let a = QueryId::random();
        let b = QueryId::random();
        // 48 time bits span the first 9.6 base32 characters after `q_`; ids
        // made together agree on the first 5 (25 bits: 2^23 ms ≈ 2 h) and
        // differ in the random part after the tenth.
        assert_eq!(a.as_str()[..7], b.as_str()[..7]);
        assert_ne!(a.as_str()[12..], b.as_str()[12..]);
    }

    #[test]
    fn base32_known_values() {
        // RFC 4648 §10 test vectors, lowercased and unpadded.
        assert_eq!(base32_lower(b""), "");
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"fo"), "mzxq");
        assert_eq!(base32_lower(b"foo"), "mzxw6");
        assert_eq!(base32_lower(b"foob"), "mzxw6yq");
        assert_eq!(base32_lower(b"fooba"), "mzxw6ytb");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_lower(&[0u8; 16]).len(), 26);
    }

    #[test]
    fn branch_numbers() {
        assert_eq!(BranchNumber::new("00000042").map(|b| b.value()), Ok(42));
        assert_eq!(
            BranchNumber::from_u32(42).map(|b| b.to_string()),
            Ok("00000042".to_string())
        );
        assert!(BranchNumber::new("00000000").is_err());
        assert!(BranchNumber::new("1234567").is_err());
        assert!(BranchNumber::new("123456789").is_err());
        assert!(BranchNumber::new("1234567a").is_err());
        assert!(BranchNumber::new("+1234567").is_err());
        assert!(BranchNumber::from_u32(100_000_000).is_err());
        assert_eq!(
            serde_json::to_string(&BranchNumber::from_u32(7).unwrap()).unwrap(),
            "\"00000007\""
        );
    }
}
