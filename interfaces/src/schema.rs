//! The JSON Schema of the wire contract, for third-party implementers.
//!
//! [`schema_document`] builds one draft-07 document whose `definitions` hold
//! every wire type, plus `x-endpoints` (method, path, request and response
//! types) and `x-error-codes` (code and HTTP status). The same document is
//! committed at `interfaces/schema/kakehashi-v1.schema.json`; a test fails
//! when the committed copy is stale (`KAKEHASHI_UPDATE_SCHEMA=1` rewrites it).

use crate::copies::{CopyDeposit, DepositReport};
use crate::envelope::{AnswerPayload, SealedEnvelope};
use crate::error::{ErrorBody, ErrorCode};
use crate::flows::FlowListView;
use crate::org::WhoAmI;
use crate::permit::{PermitKeySet, SignedPermit};
use crate::person::{PersonRegistration, RegistrationReport};
use crate::query::{QueryRequest, QueryResponse};
use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::schema::{InstanceType, Metadata, Schema, SchemaObject, StringValidation};
use schemars::JsonSchema;
use serde_json::{json, Value};

/// The `$id` of the document.
pub const SCHEMA_ID: &str = "urn:kakehashi:schema:v1";

/// A string schema with a description and a pattern.
pub(crate) fn string_schema(description: &str, pattern: &str) -> Schema {
    SchemaObject {
        metadata: Some(Box::new(Metadata {
            description: Some(description.to_string()),
            ..Default::default()
        })),
        instance_type: Some(InstanceType::String.into()),
        string: Some(Box::new(StringValidation {
            pattern: Some(pattern.to_string()),
            ..Default::default()
        })),
        ..Default::default()
    }
    .into()
}

/// Schema stand-in for `time::Date` fields: `YYYY-MM-DD`.
pub struct DateString;

impl JsonSchema for DateString {
    fn schema_name() -> String {
        "Date".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut s = SchemaObject::from(string_schema(
            "Calendar date YYYY-MM-DD (years 0001-9999)",
            "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        ));
        s.format = Some("date".to_string());
        s.into()
    }
}

/// Schema stand-in for `time::OffsetDateTime` fields: RFC 3339.
pub struct DateTimeString;

impl JsonSchema for DateTimeString {
    fn schema_name() -> String {
        "DateTime".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some("RFC 3339 date-time; the broker sends UTC, whole seconds (YYYY-MM-DDTHH:MM:SSZ)".to_string()),
                ..Default::default()
            })),
            instance_type: Some(InstanceType::String.into()),
            format: Some("date-time".to_string()),
            ..Default::default()
        }
        .into()
    }
}

/// One endpoint of the exchange listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP method.
    pub method: &'static str,
    /// Path, with `{id}` placeholders.
    pub path: &'static str,
    /// Query parameters, as text.
    pub query: Option<&'static str>,
    /// Request body: a definition name, `JSON Lines of <name>`, or none.
    pub request: Option<&'static str>,
    /// Media type of the request body.
    pub request_media_type: Option<&'static str>,
    /// Response body definition name (errors are always `ErrorBody`).
    pub response: &'static str,
    /// What it does.
    pub summary: &'static str,
}

/// The console listener's endpoints (people; server TLS, session cookie and
/// `X-CSRF-Token` on every POST and DELETE).
pub const CONSOLE_ENDPOINTS: [Endpoint; 31] = [
    console(
        "POST",
        "/api/session",
        Some("LoginRequest"),
        "SessionAnswer",
        "Log in with user id and password; sets the session cookie; `stage` says what is next",
    ),
    console(
        "GET",
        "/api/session",
        None,
        "SessionAnswer",
        "The session: who, org, roles, stage, last successful and failed login",
    ),
    console("DELETE", "/api/session", None, "none (204)", "Log out"),
    console(
        "POST",
        "/api/session/password",
        Some("PasswordChangeRequest"),
        "SessionAnswer",
        "Change the password (required while the password is temporary)",
    ),
    console(
        "POST",
        "/api/session/totp/enrolment",
        None,
        "EnrolmentAnswer",
        "A new TOTP secret as an otpauth URI and an SVG QR code",
    ),
    console(
        "POST",
        "/api/session/totp",
        Some("TotpRequest"),
        "SessionAnswer",
        "A TOTP code: confirms the enrolment or finishes the login",
    ),
    console(
        "GET",
        "/api/approvals",
        None,
        "PendingQueue",
        "Operators: the org's pending sensitive queries, oldest first",
    ),
    console(
        "GET",
        "/api/approvals/{query_id}",
        None,
        "PendingDetail",
        "Operators: one pending query with the values approval would release",
    ),
    console(
        "POST",
        "/api/approvals/{query_id}/approve",
        None,
        "Decided",
        "Operators: release the answer, sealed to the requester's reply key",
    ),
    console(
        "POST",
        "/api/approvals/{query_id}/reject",
        Some("RejectRequest"),
        "Decided",
        "Operators: refuse the answer with a reason the requester sees",
    ),
    console(
        "GET",
        "/api/operation-log",
        None,
        "object {entries, next_before}",
        "Auditors: the operation log, newest first (filters action, actor; paging before)",
    ),
    console(
        "GET",
        "/api/users",
        None,
        "UserList",
        "Administrators: every user, without secrets",
    ),
    console(
        "POST",
        "/api/users",
        Some("NewUserRequest"),
        "TemporaryPasswordAnswer",
        "Administrators: add a user; the temporary password is shown once (the union's administrators for any org, others for their own)",
    ),
    console(
        "POST",
        "/api/users/{user_id}/reset",
        None,
        "TemporaryPasswordAnswer",
        "Administrators: a new temporary password (shown once); TOTP and lock cleared, sessions ended",
    ),
    console(
        "POST",
        "/api/users/{user_id}/disable",
        None,
        "UserView",
        "Administrators: disable a user (not oneself); the user's sessions end at once",
    ),
    console(
        "POST",
        "/api/users/{user_id}/enable",
        None,
        "UserView",
        "Administrators: enable a disabled user again",
    ),
    console(
        "POST",
        "/api/users/{user_id}/grant",
        Some("object {role} or {number_privilege: true}"),
        "UserView",
        "Administrators: grant a role or the Individual-Number privilege",
    ),
    console(
        "POST",
        "/api/users/{user_id}/revoke",
        Some("object {role} or {number_privilege: true}"),
        "UserView",
        "Administrators: revoke a role (not one's own administrator role) or the Individual-Number privilege",
    ),
    console(
        "GET",
        "/api/orgs",
        None,
        "object {orgs: [{id, kind, name, status, cert_fingerprint, created_at, updated_at}]}",
        "Administrators: every registered org",
    ),
    console(
        "POST",
        "/api/orgs",
        Some("object {id, kind, name, cert_fingerprint?}"),
        "object {id, kind, name, status, cert_fingerprint, created_at, updated_at}",
        "The union's administrators: register an org (active)",
    ),
    console(
        "POST",
        "/api/orgs/{org}/suspend",
        None,
        "object {id, kind, name, status, cert_fingerprint, created_at, updated_at}",
        "The union's administrators: suspend an org; its connections are refused within seconds",
    ),
    console(
        "POST",
        "/api/orgs/{org}/activate",
        None,
        "object {id, kind, name, status, cert_fingerprint, created_at, updated_at}",
        "The union's administrators: activate a suspended org again",
    ),
    console(
        "POST",
        "/api/orgs/{org}/pin",
        Some("object {cert_fingerprint: hex SHA-256 or null}"),
        "object {id, kind, name, status, cert_fingerprint, created_at, updated_at}",
        "The union's administrators: pin an org to its certificate's SHA-256 fingerprint, or clear the pin (null)",
    ),
    console(
        "GET",
        "/api/keys",
        None,
        "object {record_keys, permit_keys, verify_command}",
        "Anyone: the keys that verify records and exports offline",
    ),
    console(
        "GET",
        "/api/flow-lists",
        None,
        "object {versions}",
        "Administrators: every flow-list version with who proposed and approved it",
    ),
    console(
        "GET",
        "/api/flow-lists/{version}",
        None,
        "object {version, in_force, diff_from_in_force}",
        "Administrators: one version's text and its difference from the version in force",
    ),
    console(
        "POST",
        "/api/flow-lists",
        Some("object {text}"),
        "object {version, sha256}",
        "Administrators: propose a flow-list version (TOML text, validated as `flows load` does)",
    ),
    console(
        "POST",
        "/api/flow-lists/{version}/approve",
        None,
        "object {version, sha256}",
        "Another administrator: approve a proposed version; it is in force at once",
    ),
    console("GET", "/api/records", None, "object {rows: [ExportRow], next_before}", "Auditors: provision records of the auditor's org, newest first (from, until, org, flow, outcome, person, before, size)"),
    console("POST", "/api/records/export", None, "object {rows, export_record_seq, files: [{name, url}], verify_command}", "Auditors: an export (format csv with BOM, or jsonl) and its bundle, to download and verify offline"),
    console("GET", "/api/records/export/{id}/{file}", None, "the file (attachment)", "Auditors: one file of an export they made, for 10 minutes"),
];

const fn console(
    method: &'static str,
    path: &'static str,
    request: Option<&'static str>,
    response: &'static str,
    summary: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        query: None,
        request,
        request_media_type: match request {
            Some(_) => Some("application/json"),
            None => None,
        },
        response,
        summary,
    }
}

/// The exchange listener's endpoints (mutual TLS).
pub const ENDPOINTS: [Endpoint; 10] = [
    Endpoint {
        method: "GET",
        path: "/v1/whoami",
        query: None,
        request: None,
        request_media_type: None,
        response: "WhoAmI",
        summary: "The org the broker identified from the client certificate",
    },
    Endpoint {
        method: "GET",
        path: "/v1/flows",
        query: None,
        request: None,
        request_media_type: None,
        response: "FlowListView",
        summary: "The flows in force in which the calling org is requester or provider",
    },
    Endpoint {
        method: "GET",
        path: "/v1/permit-keys",
        query: None,
        request: None,
        request_media_type: None,
        response: "PermitKeySet",
        summary: "The Ed25519 keys permits are signed with",
    },
    Endpoint {
        method: "GET",
        path: "/v1/record-keys",
        query: None,
        request: None,
        request_media_type: None,
        response: "RecordKeySet",
        summary: "The Ed25519 keys provision-record checkpoints are signed with (current and still trusted); pin them",
    },
    Endpoint {
        method: "GET",
        path: "/v1/record-chain",
        query: Some("from=A: a sequence whose head the caller kept; to=B (optional): the last sequence wanted (default and at most: the latest checkpoint; at most 10000 links per answer)"),
        request: None,
        request_media_type: None,
        response: "RecordChain",
        summary: "Leaf hashes of the provision records after A up to B, and the latest signed checkpoint: a kept checkpoint must extend to it",
    },
    Endpoint {
        method: "POST",
        path: "/v1/queries",
        query: None,
        request: Some("QueryRequest"),
        request_media_type: Some("application/json"),
        response: "QueryResponse",
        summary: "Ask a provider for items about a person; answers provided, pending or an error",
    },
    Endpoint {
        method: "GET",
        path: "/v1/queries/{id}",
        query: Some("wait=N: seconds (0-60) to wait while the status is pending"),
        request: None,
        request_media_type: None,
        response: "QueryResponse",
        summary: "The current state of one of the calling org's queries",
    },
    Endpoint {
        method: "POST",
        path: "/v1/persons",
        query: None,
        request: Some("JSON Lines of PersonRegistration"),
        request_media_type: Some("application/x-ndjson"),
        response: "RegistrationReport",
        summary:
            "Register insured persons (union) or link the org's own records; returns person codes",
    },
    Endpoint {
        method: "POST",
        path: "/v1/copies",
        query: None,
        request: Some("JSON Lines of CopyDeposit"),
        request_media_type: Some("application/x-ndjson"),
        response: "DepositReport",
        summary: "Deposit copies of item values per person into the org's own partition",
    },
    Endpoint {
        method: "GET",
        path: "/v1/persons/{code}/records",
        query: None,
        request: None,
        request_media_type: None,
        response: "array of DisclosureEntry",
        summary:
            "Union only: who received which items about one of its insured persons, and when (R18)",
    },
];

/// The whole schema document.
pub fn schema_document() -> Value {
    let mut gen = SchemaSettings::draft07().into_generator();
    gen.subschema_for::<ErrorBody>();
    gen.subschema_for::<WhoAmI>();
    gen.subschema_for::<FlowListView>();
    gen.subschema_for::<PermitKeySet>();
    gen.subschema_for::<crate::records::RecordKeySet>();
    gen.subschema_for::<crate::records::RecordChain>();
    gen.subschema_for::<QueryRequest>();
    gen.subschema_for::<QueryResponse>();
    gen.subschema_for::<SignedPermit>();
    gen.subschema_for::<SealedEnvelope>();
    gen.subschema_for::<AnswerPayload>();
    gen.subschema_for::<PersonRegistration>();
    gen.subschema_for::<RegistrationReport>();
    gen.subschema_for::<CopyDeposit>();
    gen.subschema_for::<DepositReport>();
    gen.subschema_for::<crate::audit::DisclosureEntry>();
    gen.subschema_for::<crate::people::LoginRequest>();
    gen.subschema_for::<crate::people::SessionAnswer>();
    gen.subschema_for::<crate::people::PasswordChangeRequest>();
    gen.subschema_for::<crate::people::TotpRequest>();
    gen.subschema_for::<crate::people::EnrolmentAnswer>();
    gen.subschema_for::<crate::people::UserList>();
    gen.subschema_for::<crate::people::NewUserRequest>();
    gen.subschema_for::<crate::people::TemporaryPasswordAnswer>();
    gen.subschema_for::<crate::approvals::PendingQueue>();
    gen.subschema_for::<crate::approvals::PendingDetail>();
    gen.subschema_for::<crate::approvals::RejectRequest>();
    gen.subschema_for::<crate::approvals::Decided>();
    let definitions = serde_json::to_value(gen.definitions()).unwrap_or(Value::Null);

    let endpoint_json = |e: &Endpoint| {
        json!({
            "method": e.method,
            "path": e.path,
            "query": e.query,
            "request": e.request,
            "request_media_type": e.request_media_type,
            "response": e.response,
            "summary": e.summary,
        })
    };
    let console_endpoints: Vec<Value> = CONSOLE_ENDPOINTS.iter().map(endpoint_json).collect();
    let endpoints: Vec<Value> = ENDPOINTS
        .iter()
        .map(|e| {
            json!({
                "method": e.method,
                "path": e.path,
                "query": e.query,
                "request": e.request,
                "request_media_type": e.request_media_type,
                "response": e.response,
                "summary": e.summary,
            })
        })
        .collect();
    let codes: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|c| json!({"code": c.as_str(), "http_status": c.http_status()}))
        .collect();

    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "Kakehashi wire contract v1",
        "description": "Types of the Kakehashi exchange listener (mutual TLS, x-endpoints) and console listener (people, x-console-endpoints). Every object refuses unknown fields. Errors are always ErrorBody with the HTTP status listed in x-error-codes.",
        "definitions": definitions,
        "x-endpoints": endpoints,
        "x-console-endpoints": console_endpoints,
        "x-error-codes": codes,
        "x-envelope": {
            "suite": crate::envelope::SUITE,
            "mode": 0,
            "kem_id": crate::envelope::KEM_ID,
            "kdf_id": crate::envelope::KDF_ID,
            "aead_id": crate::envelope::AEAD_ID,
            "info_and_aad": "\"kakehashi/envelope/v1\" 0x00 query_id 0x00 requester 0x00 provider",
        },
        "x-permit": {
            "algorithm": "ed25519",
            "signing_bytes": "field(\"kakehashi/permit/v2\") field(permit_id) field(query_id) field(key_id) field(requester) field(provider) field(flow_id) field(procedure) u32be(item count) field(item)* [sorted] field(requester_person_code) field(provider_person_commitment) field(reply_key_sha256) field(issued_at) field(expires_at); field(s) = u32be(len(s)) || utf8(s); times as YYYY-MM-DDTHH:MM:SSZ",
            "provider_person_commitment": "lowercase hex SHA-256(field(\"kakehashi/permit/provider-person/v1\") || salt || field(provider_person_code)); salt = 32 bytes the broker derives per permit and shows to the provider side only; the requester never receives the provider's code",
        },
    })
}

/// The committed document: pretty JSON with a trailing newline.
pub fn schema_document_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema_document()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/kakehashi-v1.schema.json"
    );

    #[test]
    fn committed_schema_is_current() {
        let fresh = schema_document_text();
        if std::env::var("KAKEHASHI_UPDATE_SCHEMA").as_deref() == Ok("1") {
            std::fs::write(PATH, &fresh).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(PATH).unwrap_or_default();
        assert!(
            committed == fresh,
            "{PATH} is stale; run `KAKEHASHI_UPDATE_SCHEMA=1 cargo test -p kakehashi-interfaces` and commit it"
        );
    }

    #[test]
    fn covers_every_wire_type() {
        let doc = schema_document();
        for name in [
            "ErrorBody",
            "ErrorCode",
            "WhoAmI",
            "FlowListView",
            "FlowEntry",
            "Party",
            "PermitKeySet",
            "QueryRequest",
            "QueryResponse",
            "SignedPermit",
            "PermitClaims",
            "SealedEnvelope",
            "AnswerPayload",
            "PersonRegistration",
            "RegistrationReport",
            "CopyDeposit",
            "DepositReport",
            "IndividualNumber",
            "ItemValue",
            "LineIssue",
            "DisclosureEntry",
            "RecordKeySet",
            "RecordChain",
            "SignedCheckpoint",
        ] {
            assert!(doc["definitions"].get(name).is_some(), "{name} missing");
        }
        for e in ENDPOINTS {
            let name = e.response.trim_start_matches("array of ");
            assert!(doc["definitions"].get(name).is_some(), "{name} missing");
            if let Some(req) = e.request {
                let name = req.trim_start_matches("JSON Lines of ");
                assert!(doc["definitions"].get(name).is_some(), "{name} missing");
            }
        }
        assert_eq!(
            doc["definitions"]["QueryRequest"]["additionalProperties"],
            json!(false)
        );
    }
}
