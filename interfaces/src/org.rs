//! Organisations: ids, kinds, and the `whoami` answer.

use crate::InvalidInput;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An organisation id: 3–64 characters of lowercase ASCII letters, digits and
/// `-`, starting with a letter. Carried in certificates as
/// `urn:kakehashi:org:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl JsonSchema for OrgId {
    fn schema_name() -> String {
        "OrgId".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        crate::schema::string_schema(
            "Org id: 3-64 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'; \
             carried in client certificates as the SAN URI urn:kakehashi:org:<id>",
            "^[a-z][a-z0-9-]{1,62}[a-z0-9]$",
        )
    }
}

/// The URI prefix of the SAN that names an org in its client certificate.
pub const ORG_URI_PREFIX: &str = "urn:kakehashi:org:";

impl OrgId {
    /// Validates and wraps an org id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        let ok_len = (3..=64).contains(&s.len());
        let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok_len && ok_first && ok_chars && !s.ends_with('-') {
            Ok(Self(s))
        } else {
            Err(InvalidInput::new(
                "org_id",
                "must be 3-64 characters of a-z, 0-9 and '-', starting with a letter",
            ))
        }
    }

    /// Parses `urn:kakehashi:org:<id>`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        uri.strip_prefix(ORG_URI_PREFIX)
            .and_then(|id| Self::new(id).ok())
    }

    /// The SAN URI form.
    pub fn to_uri(&self) -> String {
        format!("{ORG_URI_PREFIX}{}", self.0)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<OrgId> for String {
    fn from(id: OrgId) -> String {
        id.0
    }
}

impl std::fmt::Display for OrgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for OrgId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for OrgId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What kind of body an org is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrgKind {
    /// The wide-area union (広域連合).
    Union,
    /// A municipality (市区町村).
    Municipality,
    /// An external agency (他の情報保有機関).
    Agency,
}

impl OrgKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Union => "union",
            OrgKind::Municipality => "municipality",
            OrgKind::Agency => "agency",
        }
    }
}

impl std::str::FromStr for OrgKind {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "union" => Ok(OrgKind::Union),
            "municipality" => Ok(OrgKind::Municipality),
            "agency" => Ok(OrgKind::Agency),
            _ => Err(InvalidInput::new(
                "kind",
                "must be one of union, municipality, agency",
            )),
        }
    }
}

/// Whether an org may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrgStatus {
    /// May connect.
    Active,
    /// Refused at the edge.
    Suspended,
}

impl OrgStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgStatus::Active => "active",
            OrgStatus::Suspended => "suspended",
        }
    }
}

impl std::str::FromStr for OrgStatus {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(OrgStatus::Active),
            "suspended" => Ok(OrgStatus::Suspended),
            _ => Err(InvalidInput::new("status", "must be active or suspended")),
        }
    }
}

/// `GET /v1/whoami`: the org the broker authenticated from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// The org id from the certificate's SAN URI.
    pub org_id: OrgId,
    /// The org's kind.
    pub kind: OrgKind,
    /// The org's registered name.
    pub name: String,
    /// SHA-256 fingerprint (lowercase hex) of the presented certificate.
    pub certificate_fingerprint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids() {
        assert!(OrgId::new("city-saitama").is_ok());
        assert!(OrgId::new("Ci").is_err());
        assert!(OrgId::new("1city").is_err());
        assert!(OrgId::new("city_saitama").is_err());
        assert!(OrgId::new("city-").is_err());
        assert_eq!(
            OrgId::from_uri("urn:kakehashi:org:union-saitama").map(|o| o.to_uri()),
            Some("urn:kakehashi:org:union-saitama".to_string())
        );
        assert!(serde_json::from_str::<OrgId>("\"BAD ID\"").is_err());
    }
}
