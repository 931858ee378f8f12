//! Queries (照会): `POST /v1/queries` and `GET /v1/queries/{id}?wait=N`.

use crate::envelope::{ReplyPublicKey, SealedEnvelope};
use crate::ids::{FlowId, ItemCode, PersonCode, ProcedureCode, QueryId};
use crate::org::OrgId;
use crate::people::UserId;
use crate::permit::SignedPermit;
use crate::records::SignedCheckpoint;
use crate::InvalidInput;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use time::OffsetDateTime;

/// The most items one query may ask for.
pub const MAX_QUERY_ITEMS: usize = 64;
/// The longest `wait` a client may ask for on `GET /v1/queries/{id}`, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// `POST /v1/queries`: ask one provider for items about one person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "QueryRequestWire")]
pub struct QueryRequest {
    /// The flow the query is made under.
    pub flow_id: FlowId,
    /// The procedure the query serves.
    pub procedure: ProcedureCode,
    /// The org asked.
    pub provider: OrgId,
    /// The person, by the requester's own code.
    pub person: PersonCode,
    /// Items asked for: 1–64, no duplicates.
    pub items: Vec<ItemCode>,
    /// A fresh X25519 public key for this query; the answer is sealed to it.
    pub reply_key: ReplyPublicKey,
    /// The person at the terminal who asks (their console user id), when
    /// the terminal knows it. Where the requester org is also the provider,
    /// that person may not approve the answer (R11: approver ≠ requester).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<UserId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequestWire {
    flow_id: FlowId,
    procedure: ProcedureCode,
    provider: OrgId,
    person: PersonCode,
    items: Vec<ItemCode>,
    reply_key: ReplyPublicKey,
    #[serde(default)]
    requested_by: Option<UserId>,
}

impl TryFrom<QueryRequestWire> for QueryRequest {
    type Error = InvalidInput;
    fn try_from(w: QueryRequestWire) -> Result<Self, Self::Error> {
        let q = QueryRequest {
            flow_id: w.flow_id,
            procedure: w.procedure,
            provider: w.provider,
            person: w.person,
            items: w.items,
            reply_key: w.reply_key,
            requested_by: w.requested_by,
        };
        q.validate()?;
        Ok(q)
    }
}

impl QueryRequest {
    /// Checks the rules deserialization enforces; for requests built in code.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.items.is_empty() || self.items.len() > MAX_QUERY_ITEMS {
            return Err(InvalidInput::new("items", "must name 1 to 64 items"));
        }
        let unique: BTreeSet<&ItemCode> = self.items.iter().collect();
        if unique.len() != self.items.len() {
            return Err(InvalidInput::new("items", "must not repeat an item"));
        }
        Ok(())
    }
}

/// Where a query stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryStatus {
    /// Answered; the envelope holds the sealed answer.
    Provided,
    /// Waiting for an operator of the provider to approve sensitive items (R11).
    Pending,
    /// An operator of the provider refused to release the answer.
    Rejected,
    /// The result passed its retention time and was deleted (R13).
    Expired,
}

impl QueryStatus {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryStatus::Provided => "provided",
            QueryStatus::Pending => "pending",
            QueryStatus::Rejected => "rejected",
            QueryStatus::Expired => "expired",
        }
    }
}

impl std::fmt::Display for QueryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueryStatus {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "provided" => Ok(QueryStatus::Provided),
            "pending" => Ok(QueryStatus::Pending),
            "rejected" => Ok(QueryStatus::Rejected),
            "expired" => Ok(QueryStatus::Expired),
            _ => Err(InvalidInput::new(
                "status",
                "must be provided, pending, rejected or expired",
            )),
        }
    }
}

/// The answer to `POST /v1/queries` and `GET /v1/queries/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "QueryResponseWire")]
pub struct QueryResponse {
    /// The broker's id for this query.
    pub query_id: QueryId,
    /// Where the query stands.
    pub status: QueryStatus,
    /// The provision permit issued for the query (R7).
    pub permit: SignedPermit,
    /// The sealed answer: present exactly when `status` is `provided`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<SealedEnvelope>,
    /// When the result will be deleted (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "crate::schema::DateTimeString")]
    pub expires_at: OffsetDateTime,
    /// Why the provider's operator rejected the query: present exactly when
    /// `status` is `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectionReason>,
    /// The latest signed checkpoint of the broker's provision records when
    /// it answered. Keep it: `GET /v1/record-chain` later shows whether the
    /// log still extends it. Absent before the first checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<SignedCheckpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryResponseWire {
    query_id: QueryId,
    status: QueryStatus,
    permit: SignedPermit,
    #[serde(default)]
    envelope: Option<SealedEnvelope>,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    #[serde(default)]
    reason: Option<RejectionReason>,
    #[serde(default)]
    checkpoint: Option<SignedCheckpoint>,
}

impl TryFrom<QueryResponseWire> for QueryResponse {
    type Error = InvalidInput;
    fn try_from(w: QueryResponseWire) -> Result<Self, Self::Error> {
        if (w.status == QueryStatus::Provided) != w.envelope.is_some() {
            return Err(InvalidInput::new(
                "envelope",
                "must be present exactly when status is provided",
            ));
        }
        if w.permit.claims.query_id != w.query_id {
            return Err(InvalidInput::new("permit", "names another query"));
        }
        if (w.status == QueryStatus::Rejected) != w.reason.is_some() {
            return Err(InvalidInput::new(
                "reason",
                "must be present exactly when status is rejected",
            ));
        }
        Ok(Self {
            query_id: w.query_id,
            status: w.status,
            permit: w.permit,
            envelope: w.envelope,
            expires_at: w.expires_at,
            reason: w.reason,
            checkpoint: w.checkpoint,
        })
    }
}

/// Most characters in a rejection reason.
pub const MAX_REASON_CHARS: usize = 200;

/// An operator's reason for rejecting a sensitive query: 1 to 200
/// characters without control characters. It is shown to the requester, so
/// it names the rule, never the person's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct RejectionReason(String);

impl RejectionReason {
    /// Validates a reason (surrounding spaces are trimmed).
    pub fn new(text: &str) -> Result<Self, InvalidInput> {
        let trimmed = text.trim();
        let chars = trimmed.chars().count();
        if chars == 0 || chars > MAX_REASON_CHARS {
            return Err(InvalidInput::new("reason", "must be 1 to 200 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "reason",
                "must not contain control characters (line breaks, tabs)",
            ));
        }
        // The reason travels to the requester: an Individual Number never
        // does (R4).
        if !crate::individual_number::spans_in(trimmed).is_empty() {
            return Err(InvalidInput::new(
                "reason",
                "個人番号を含めないでください / must not contain an Individual Number",
            ));
        }
        Ok(Self(trimmed.to_string()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RejectionReason {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<RejectionReason> for String {
    fn from(r: RejectionReason) -> String {
        r.0
    }
}

impl std::fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The header that makes `POST /v1/queries` idempotent (the IETF
/// `Idempotency-Key` draft): a retry under the same key, within the
/// result's lifetime, gets the same query back and makes no second
/// provision record; another body under a used key is refused (409).
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// Most characters of an idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// An `Idempotency-Key` value: 1 to 255 visible ASCII characters (a UUID
/// is typical). The draft's structured-field quotes around it are accepted
/// and removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a header value.
    pub fn new(value: &str) -> Result<Self, InvalidInput> {
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value.is_empty() || value.len() > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(InvalidInput::new(
                "Idempotency-Key",
                "must be 1 to 255 characters",
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidInput::new(
                "Idempotency-Key",
                "must be visible ASCII characters without spaces (a UUID, for example)",
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod rejection_reason_tests {
    use super::*;

    #[test]
    fn a_reason_with_an_individual_number_is_refused() {
        assert!(RejectionReason::new("対象外の照会です").is_ok());
        assert!(RejectionReason::new("番号 1234 の件").is_ok());
        for written in ["123456789018", "1234-5678-9018", "１２３４５６７８９０１８"] {
            let refused = RejectionReason::new(&format!("本人 {written} は対象外"));
            assert!(refused.is_err(), "{written}");
        }
    }
}

#[cfg(test)]
mod idempotency_key_tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert_eq!(
            IdempotencyKey::new("\"8e0f-1\"").map(|k| k.0),
            Ok("8e0f-1".to_string())
        );
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new("a b").is_err());
        assert!(IdempotencyKey::new("鍵").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::new(&"k".repeat(255)).is_ok());
    }
}
