//! The one error body every refusal uses: `{code, message, request_id}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Stable machine-readable reason for every refusal. New codes may be added;
/// existing ones never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or a parameter failed validation.
    InvalidInput,
    /// No client certificate, or it did not verify.
    Unauthenticated,
    /// The certificate names an org that is not registered.
    UnknownOrg,
    /// The org is registered but suspended.
    OrgSuspended,
    /// The certificate does not match the org's pinned fingerprint.
    CertificatePinMismatch,
    /// The org may not perform this operation.
    Forbidden,
    /// No such resource (or not visible to this org).
    NotFound,
    /// The request body is larger than the configured limit.
    PayloadTooLarge,
    /// Too many requests; retry after the `Retry-After` header.
    RateLimited,
    /// No entry of the flow list covers this requester, provider and procedure.
    NotOnFlowList,
    /// The flow exists but is not valid at this time.
    FlowNotInForce,
    /// An item was requested that the flow does not allow.
    ItemNotAllowed,
    /// The person code is not known to the requester.
    UnknownPerson,
    /// The provider holds no copy for this person.
    NoCopy,
    /// A permit failed verification.
    InvalidPermit,
    /// The result has expired and was deleted.
    Expired,
    /// The broker is starting or shutting down.
    Unavailable,
    /// The HTTP method is not allowed on this path.
    MethodNotAllowed,
    /// The body's content type is not the one the endpoint takes
    /// (`application/json` or `application/x-ndjson`).
    UnsupportedMediaType,
    /// The client sent the request too slowly.
    RequestTimeout,
    /// An unexpected failure inside the broker; nothing was changed.
    Internal,
    /// The request conflicts with the resource's state (e.g. a query that
    /// was already approved or rejected); nothing was changed.
    Conflict,
    /// A person's account is locked after repeated failed logins, or disabled.
    AccountLocked,
    /// No valid session (people endpoints), or it timed out: log in again.
    SessionRequired,
    /// The `Idempotency-Key` was used before for a different request body;
    /// nothing was changed. A new request needs a new key (retrying does
    /// not help).
    IdempotencyKeyReused,
}

impl ErrorCode {
    /// Every code, in declaration order (for documentation and exhaustive tests).
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::InvalidInput,
        ErrorCode::Unauthenticated,
        ErrorCode::UnknownOrg,
        ErrorCode::OrgSuspended,
        ErrorCode::CertificatePinMismatch,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NotOnFlowList,
        ErrorCode::FlowNotInForce,
        ErrorCode::ItemNotAllowed,
        ErrorCode::UnknownPerson,
        ErrorCode::NoCopy,
        ErrorCode::InvalidPermit,
        ErrorCode::Expired,
        ErrorCode::Unavailable,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RequestTimeout,
        ErrorCode::Internal,
        ErrorCode::Conflict,
        ErrorCode::AccountLocked,
        ErrorCode::SessionRequired,
        ErrorCode::IdempotencyKeyReused,
    ];

    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthenticated
            | ErrorCode::UnknownOrg
            | ErrorCode::OrgSuspended
            | ErrorCode::CertificatePinMismatch => 401,
            ErrorCode::Forbidden
            | ErrorCode::NotOnFlowList
            | ErrorCode::FlowNotInForce
            | ErrorCode::ItemNotAllowed
            | ErrorCode::InvalidPermit => 403,
            ErrorCode::NotFound | ErrorCode::UnknownPerson | ErrorCode::NoCopy => 404,
            ErrorCode::Expired => 410,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::Conflict => 409,
            ErrorCode::AccountLocked => 423,
            ErrorCode::SessionRequired => 401,
            ErrorCode::IdempotencyKeyReused => 422,
        }
    }

    /// The snake_case wire name, e.g. `not_on_flow_list`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::UnknownOrg => "unknown_org",
            ErrorCode::OrgSuspended => "org_suspended",
            ErrorCode::CertificatePinMismatch => "certificate_pin_mismatch",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotOnFlowList => "not_on_flow_list",
            ErrorCode::FlowNotInForce => "flow_not_in_force",
            ErrorCode::ItemNotAllowed => "item_not_allowed",
            ErrorCode::UnknownPerson => "unknown_person",
            ErrorCode::NoCopy => "no_copy",
            ErrorCode::InvalidPermit => "invalid_permit",
            ErrorCode::Expired => "expired",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
            ErrorCode::AccountLocked => "account_locked",
            ErrorCode::SessionRequired => "session_required",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable reason code.
    pub code: ErrorCode,
    /// Human-readable explanation; never contains item values or Individual Numbers.
    pub message: String,
    /// Identifier of the request, also written to the broker's log.
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!((400..600).contains(&code.http_status()));
        }
        let unique: std::collections::BTreeSet<&str> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(unique.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn unknown_fields_refused() {
        assert!(serde_json::from_str::<ErrorBody>(
            r#"{"code":"internal","message":"m","request_id":"r","x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ErrorBody>(
            r#"{"code":"nope","message":"m","request_id":"r"}"#
        )
        .is_err());
    }
}
