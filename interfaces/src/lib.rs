//! The Kakehashi wire contract.
//!
//! Everything that crosses the exchange listener is defined here: identifiers
//! with validating constructors, request and response bodies, the one error
//! body, the sealed envelope and the provision permit. The broker, the client
//! and third-party implementations all build on these types.
//!
//! Every type validates itself when constructed and when deserialized, so a
//! value of one of these types is always well-formed; handlers never re-check
//! formats.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod approvals;
pub mod audit;
pub mod copies;
pub mod datetime;
pub mod envelope;
pub mod error;
pub mod flows;
pub mod ids;
pub mod individual_number;
pub mod json;
pub mod org;
pub mod people;
pub mod permit;
pub mod person;
pub mod query;
pub mod records;
pub mod schema;

mod b64;

pub use copies::{CopyDeposit, DepositReport, ItemValue};
pub use envelope::{AnswerPayload, EnvelopeContext, ReplyKeyPair, ReplyPublicKey, SealedEnvelope};
pub use error::{ErrorBody, ErrorCode};
pub use flows::{FlowEntry, FlowListView, Party};
pub use ids::{
    BranchNumber, FlowId, ItemCode, KeyId, PermitId, PersonCode, ProcedureCode, QueryId,
};
pub use individual_number::IndividualNumber;
pub use json::{parse_json, parse_jsonl};
pub use org::{OrgId, OrgKind, OrgStatus, WhoAmI};
pub use permit::{PermitClaims, PermitKeySet, PermitPublicKey, SignedPermit};
pub use person::{
    BasicFacts, LineIssue, LineReason, PersonRegistration, RegisteredPerson, RegistrationReport,
    Sex,
};
pub use query::{QueryRequest, QueryResponse, QueryStatus, RejectionReason};
pub use records::{RecordChain, RecordKey, RecordKeySet, SignedCheckpoint};

/// Validation failure of an input value; becomes `invalid_input` at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    /// Which field (or path) was wrong.
    pub field: &'static str,
    /// What was wrong with it, without echoing secret values.
    pub reason: String,
}

impl InvalidInput {
    /// A validation error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}
