//! The Kakehashi wire contract.
//!
//! Everything that crosses the exchange listener is defined here: identifiers
//! with validating constructors, request and response bodies, the one error
//! body, the sealed envelope and the provision permit. The broker, the client
//! and third-party implementations all build on these types.
#![forbid(unsafe_code)]

pub mod error;
pub mod org;

pub use error::{ErrorBody, ErrorCode};
pub use org::{OrgId, OrgKind, OrgStatus, WhoAmI};

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
