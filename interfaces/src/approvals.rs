//! The approval queue of sensitive answers (R11) on the console listener:
//! `GET /api/approvals`, `GET /api/approvals/{query_id}`,
//! `POST /api/approvals/{query_id}/approve`, `POST …/reject`.
//!
//! Nothing here carries a person code of either org: an operator decides on
//! the flow, the requester and the values, not on who the person is.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::copies::ItemValue;
use crate::ids::ItemCode;
use crate::query::RejectionReason;

/// A pending query in the provider's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingSummary {
    /// The query.
    pub query_id: String,
    /// The requesting org.
    pub requester: String,
    /// Flow id of the flow list.
    pub flow_id: String,
    /// Procedure code.
    pub procedure: String,
    /// Item codes asked.
    pub items: Vec<String>,
    /// When it was asked (RFC 3339 UTC, whole seconds).
    pub asked_at: String,
    /// Seconds it has waited.
    pub age_secs: i64,
    /// When it expires undecided (RFC 3339 UTC, whole seconds).
    pub expires_at: String,
}

/// `GET /api/approvals`: the org's queue, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingQueue {
    /// How many are listed.
    pub count: usize,
    /// The pending queries.
    pub pending: Vec<PendingSummary>,
}

/// `GET /api/approvals/{query_id}`: one pending query and the values
/// approval would release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingDetail {
    /// What the queue shows.
    #[serde(flatten)]
    pub summary: PendingSummary,
    /// The values that would be released, by item.
    pub values: BTreeMap<ItemCode, ItemValue>,
}

/// `POST /api/approvals/{query_id}/reject` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Shown to the requester: the rule, never the person's data.
    pub reason: RejectionReason,
}

/// The answer to an approval or rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    /// The query.
    pub query_id: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// Sequence number of the decision's provision record.
    pub record_seq: u64,
}
