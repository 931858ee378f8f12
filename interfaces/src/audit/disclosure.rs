//! Disclosure to the person (R18): the records about one person, as the
//! org that knows them may show them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One line of a person's disclosure (R18): who received which items, when.
/// Carries no person code of any org. The answer of
/// `GET /v1/persons/{code}/records` is a JSON array of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DisclosureEntry {
    /// Record sequence number.
    pub seq: u64,
    /// UTC time.
    pub at: String,
    /// Query id.
    pub query_id: String,
    /// Org that asked (and, when provided, received).
    pub requester: String,
    /// Org that held the data.
    pub provider: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
    /// Procedure code.
    pub procedure: Option<String>,
    /// Item codes.
    pub items: Vec<String>,
    /// Outcome name (`provided`, `denied` …).
    pub outcome: String,
    /// Denial reason code.
    pub reason: Option<String>,
    /// Whether the asking org knows the person as `requester` or `provider`.
    pub role: String,
}
