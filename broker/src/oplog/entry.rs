//! One operation-log entry: what a caller hands in ([`OpEntry`]), what is
//! stored and read back ([`OpRecord`]), its validation and its canonical
//! encoding.
//!
//! # Canonical encoding of an entry (version 1)
//!
//! Integers are big-endian. `str` is a `u32` byte length followed by UTF-8
//! bytes; `opt<T>` is `0x00` (absent) or `0x01` followed by `T`.
//!
//! ```text
//! u8        version = 1
//! u64       seq
//! str       at          fixed-width RFC 3339 UTC, as stored
//! str       actor
//! opt<str>  org
//! str       action      snake_case name, e.g. "login_failed"
//! opt<str>  target
//! u8        result      1 success; 2 refused, then str code (snake_case)
//! opt<str>  source      client IP address, canonical text form
//! opt<str>  detail
//! ```
//!
//! `leaf = SHA-256("kakehashi/oplog/v1/leaf\0" ‖ canonical bytes)`; the chain
//! and the signatures over it are in [`super::chain`].

use std::net::IpAddr;

use kakehashi_interfaces::audit::Hash;
use kakehashi_interfaces::{ErrorCode, OrgId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BrokerError;

/// Version byte at the start of every canonical encoding.
pub const ENTRY_ENCODING_VERSION: u8 = 1;

/// Longest `target` and `detail`, in characters: room for an id or a short
/// fact, never for free text.
pub const MAX_TEXT_CHARS: usize = 200;

/// Longest `actor`, in characters.
pub const MAX_ACTOR_CHARS: usize = 64;

/// Prefix of actors that are people on the broker's host (the `kakehashi-broker` CLI).
pub const HOST_ACTOR_PREFIX: &str = "host:";

const LEAF_TAG: &[u8] = b"kakehashi/oplog/v1/leaf\0";

macro_rules! actions {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// What a person did. Stored and sent by its snake_case name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum OpAction {
            $( $(#[$doc])* $variant, )*
        }

        impl OpAction {
            /// Every action, in declaration order.
            pub const ALL: &'static [OpAction] = &[ $( OpAction::$variant, )* ];

            /// The snake_case name, as stored and hashed.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( OpAction::$variant => $name, )*
                }
            }
        }

        impl std::str::FromStr for OpAction {
            type Err = BrokerError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $name => Ok(OpAction::$variant), )*
                    _ => Err(BrokerError::refused(
                        ErrorCode::InvalidInput,
                        "unknown operation-log action",
                    )),
                }
            }
        }
    };
}

actions! {
    /// Password (and TOTP) accepted; a session began.
    LoginSucceeded = "login_succeeded",
    /// A login was refused (wrong password or code, unknown user).
    LoginFailed = "login_failed",
    /// Repeated failures locked the account.
    AccountLocked = "account_locked",
    /// The person ended the session.
    Logout = "logout",
    /// The session ended by idle timeout or absolute lifetime.
    SessionExpired = "session_expired",
    /// A TOTP authenticator was enrolled.
    TotpEnrolled = "totp_enrolled",
    /// A TOTP code was refused (wrong or replayed).
    TotpFailed = "totp_failed",
    /// The person changed their password.
    PasswordChanged = "password_changed",
    /// An operator approved a pending query.
    Approve = "approve",
    /// An operator rejected a pending query.
    Reject = "reject",
    /// An auditor searched the provision records.
    RecordsSearch = "records_search",
    /// An auditor exported provision records.
    RecordsExport = "records_export",
    /// Someone read the operation log.
    OplogSearch = "oplog_search",
    /// A user account was created.
    UserAdded = "user_added",
    /// A user's password was reset (a temporary one issued).
    UserReset = "user_reset",
    /// A user account was disabled.
    UserDisabled = "user_disabled",
    /// An administrator enabled a disabled user again.
    UserEnabled = "user_enabled",
    /// A role was granted to a user.
    RoleGranted = "role_granted",
    /// A role was revoked from a user.
    RoleRevoked = "role_revoked",
    /// The Individual-Number privilege was granted (R5).
    NumberPrivilegeGranted = "number_privilege_granted",
    /// The Individual-Number privilege was revoked (R5).
    NumberPrivilegeRevoked = "number_privilege_revoked",
    /// A flow-list version was proposed.
    FlowListProposed = "flow_list_proposed",
    /// A proposed flow-list version was approved by a second administrator.
    FlowListApproved = "flow_list_approved",
    /// An org was registered.
    OrgAdded = "org_added",
    /// An org was suspended.
    OrgSuspended = "org_suspended",
    /// A suspended org was re-activated.
    OrgActivated = "org_activated",
    /// An org's certificate pin was set or cleared.
    OrgPinned = "org_pinned",
    /// An administrator accepted the provision records' stored head after
    /// the records sealer refused (`records accept-head`).
    RecordsHeadAccepted = "records_head_accepted",
    /// A broker key was rotated or retired (`kakehashi-broker keys`).
    KeysChanged = "keys_changed",
}

impl std::fmt::Display for OpAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the action ended. On the wire: `{"result": "success"}` or
/// `{"result": "refused", "code": "forbidden"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "code", rename_all = "snake_case")]
pub enum OpResult {
    /// It was done.
    Success,
    /// It was refused with this stable code; nothing was changed.
    Refused(ErrorCode),
}

impl OpResult {
    /// `success` or `refused`, as stored in the `result` column.
    pub fn name(self) -> &'static str {
        match self {
            OpResult::Success => "success",
            OpResult::Refused(_) => "refused",
        }
    }

    /// The refusal code, if refused.
    pub fn code(self) -> Option<ErrorCode> {
        match self {
            OpResult::Success => None,
            OpResult::Refused(code) => Some(code),
        }
    }

    /// `Success` for `Ok`, `Refused(code)` for an error.
    pub fn of<T>(outcome: &Result<T, BrokerError>) -> OpResult {
        match outcome {
            Ok(_) => OpResult::Success,
            Err(e) => OpResult::Refused(e.code()),
        }
    }

    /// The inverse of [`OpResult::name`] and [`OpResult::code`].
    pub(crate) fn from_parts(name: &str, code: Option<&str>) -> Result<OpResult, String> {
        match (name, code) {
            ("success", None) => Ok(OpResult::Success),
            ("refused", Some(code)) => ErrorCode::ALL
                .iter()
                .find(|c| c.as_str() == code)
                .map(|c| OpResult::Refused(*c))
                .ok_or_else(|| "unknown refusal code".to_string()),
            _ => Err("result and code do not fit together".into()),
        }
    }
}

/// One human action to log. There is no field for a password, a TOTP
/// secret or code, an item value or an Individual Number, and the text
/// fields are short and validated ([`MAX_TEXT_CHARS`]): they name things
/// (a user id, a query id, a flow-list version), they never carry content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpEntry {
    /// Who: a personal user id, or `host:<login name>` for the host CLI.
    pub actor: String,
    /// The org the action concerns (the actor's own, or the org acted on).
    pub org: Option<OrgId>,
    /// What.
    pub action: OpAction,
    /// What it was done to: a user id, query id, flow-list version, org id.
    pub target: Option<String>,
    /// How it ended.
    pub result: OpResult,
    /// The client's IP address (people endpoints); `None` on the host.
    pub source: Option<String>,
    /// A short fact (a reason code, a role name, a filter summary).
    pub detail: Option<String>,
}

impl OpEntry {
    /// An entry with only the required fields.
    pub fn new(actor: impl Into<String>, action: OpAction, result: OpResult) -> OpEntry {
        OpEntry {
            actor: actor.into(),
            org: None,
            action,
            target: None,
            result,
            source: None,
            detail: None,
        }
    }

    /// Checks every field and brings it to its stored form: empty
    /// optionals become absent, the source address its canonical text.
    /// Errors name the field, never its content.
    pub fn validate(mut self) -> Result<OpEntry, BrokerError> {
        validate_actor(&self.actor)?;
        for (name, field) in [("target", &mut self.target), ("detail", &mut self.detail)] {
            if field.as_deref() == Some("") {
                *field = None;
            }
            if let Some(text) = field.as_deref() {
                check_text(name, text)?;
            }
        }
        if self.source.as_deref() == Some("") {
            self.source = None;
        }
        if let Some(source) = &self.source {
            let ip: IpAddr = source
                .parse()
                .map_err(|_| invalid("source must be an IP address"))?;
            self.source = Some(ip.to_string());
        }
        Ok(self)
    }
}

fn invalid(message: &str) -> BrokerError {
    BrokerError::refused(ErrorCode::InvalidInput, format!("operation log: {message}"))
}

fn check_text(name: &str, text: &str) -> Result<(), BrokerError> {
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(&format!(
            "{name} is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(&format!("{name} contains control characters")));
    }
    Ok(())
}

/// Checks an actor: a personal user id or `host:<login name>`, at most
/// [`MAX_ACTOR_CHARS`] characters, without spaces or control characters.
pub fn validate_actor(actor: &str) -> Result<(), BrokerError> {
    let name = actor.strip_prefix(HOST_ACTOR_PREFIX).unwrap_or(actor);
    if name.is_empty() {
        return Err(invalid("actor is empty"));
    }
    if actor.chars().count() > MAX_ACTOR_CHARS {
        return Err(invalid(&format!(
            "actor is longer than {MAX_ACTOR_CHARS} characters"
        )));
    }
    if actor.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("actor contains spaces or control characters"));
    }
    Ok(())
}

/// The actor of a host command: `host:` and the login name from `$USER`, or
/// `host:root` when it is unset.
pub fn host_actor() -> Result<String, BrokerError> {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    let actor = format!("{HOST_ACTOR_PREFIX}{user}");
    validate_actor(&actor)?;
    Ok(actor)
}

/// One stored entry, as read back and as hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Gap-free sequence number; the only order.
    pub seq: u64,
    /// When it was logged: UTC, fixed-width RFC 3339 with microseconds.
    pub at: String,
    /// Who.
    pub actor: String,
    /// The org the action concerns.
    pub org: Option<String>,
    /// What.
    pub action: OpAction,
    /// What it was done to.
    pub target: Option<String>,
    /// How it ended (`result`, and `code` when refused).
    #[serde(flatten)]
    pub result: OpResult,
    /// Client IP address.
    pub source: Option<String>,
    /// A short fact.
    pub detail: Option<String>,
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    // Stored text is bounded long before 4 GiB; saturating keeps this total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl OpRecord {
    /// The record an entry becomes at `seq`, logged `at`.
    pub(crate) fn from_entry(entry: &OpEntry, seq: u64, at: String) -> OpRecord {
        OpRecord {
            seq,
            at,
            actor: entry.actor.clone(),
            org: entry.org.as_ref().map(|o| o.as_str().to_string()),
            action: entry.action,
            target: entry.target.clone(),
            result: entry.result,
            source: entry.source.clone(),
            detail: entry.detail.clone(),
        }
    }

    /// The canonical encoding (see the module documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(ENTRY_ENCODING_VERSION);
        put_u64(&mut out, self.seq);
        put_str(&mut out, &self.at);
        put_str(&mut out, &self.actor);
        put_opt_str(&mut out, self.org.as_deref());
        put_str(&mut out, self.action.as_str());
        put_opt_str(&mut out, self.target.as_deref());
        match self.result {
            OpResult::Success => out.push(1),
            OpResult::Refused(code) => {
                out.push(2);
                put_str(&mut out, code.as_str());
            }
        }
        put_opt_str(&mut out, self.source.as_deref());
        put_opt_str(&mut out, self.detail.as_deref());
        out
    }

    /// `leaf = SHA-256(leaf tag ‖ canonical bytes)`.
    pub fn leaf_hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(LEAF_TAG);
        h.update(self.canonical_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn sample() -> OpRecord {
        OpRecord {
            seq: 7,
            at: "2026-11-23T09:50:55.614263Z".into(),
            actor: "kawagoe-op1".into(),
            org: Some("city-kawagoe".into()),
            action: OpAction::Approve,
            target: Some("q-7f3a".into()),
            result: OpResult::Success,
            source: Some("192.0.2.7".into()),
            detail: None,
        }
    }

    #[test]
    fn oplog_encoding_is_stable() {
        // Pinned (computed independently from the documented encoding):
        // changing the encoding breaks every stored chain.
        assert_eq!(
            hex::encode(sample().leaf_hash()),
            "03f27496d554da88a81353562424cd93888eb6b8d0612a8b668cbe12d9d82f57"
        );
    }

    #[test]
    fn oplog_every_field_changes_the_hash() {
        let base = sample();
        let mut seen = BTreeSet::new();
        seen.insert(base.leaf_hash());
        type Change = Box<dyn Fn(&mut OpRecord)>;
        let variants: Vec<Change> = vec![
            Box::new(|r| r.seq = 8),
            Box::new(|r| r.at = "2026-11-23T09:50:55.614264Z".into()),
            Box::new(|r| r.actor = "kawagoe-op2".into()),
            Box::new(|r| r.org = None),
            Box::new(|r| r.action = OpAction::Reject),
            Box::new(|r| r.target = None),
            Box::new(|r| r.result = OpResult::Refused(ErrorCode::Forbidden)),
            Box::new(|r| r.result = OpResult::Refused(ErrorCode::Conflict)),
            Box::new(|r| r.source = None),
            Box::new(|r| r.detail = Some("x".into())),
            // Moving bytes between adjacent fields must not collide.
            Box::new(|r| {
                r.actor = "kawagoe-op1c".into();
                r.org = Some("ity-kawagoe".into());
            }),
        ];
        for change in variants {
            let mut r = base.clone();
            change(&mut r);
            assert!(seen.insert(r.leaf_hash()), "collision for {r:?}");
        }
    }

    #[test]
    fn oplog_actions_round_trip_by_name() {
        assert_eq!(OpAction::ALL.len(), 29);
        let names: BTreeSet<&str> = OpAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), OpAction::ALL.len());
        for a in OpAction::ALL {
            assert_eq!(a.as_str().parse::<OpAction>().unwrap(), *a);
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::Value::String(a.as_str().into())
            );
        }
        assert!("login".parse::<OpAction>().is_err());
    }

    #[test]
    fn oplog_result_on_the_wire() {
        let mut r = sample();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["result"], "success");
        assert!(v.get("code").is_none());
        r.result = OpResult::Refused(ErrorCode::AccountLocked);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["result"].as_str(), v["code"].as_str()),
            (Some("refused"), Some("account_locked"))
        );
        assert_eq!(serde_json::from_value::<OpRecord>(v).unwrap(), r);
        assert_eq!(
            OpResult::from_parts("refused", Some("forbidden")).unwrap(),
            OpResult::Refused(ErrorCode::Forbidden)
        );
        assert!(OpResult::from_parts("success", Some("forbidden")).is_err());
        assert!(OpResult::from_parts("refused", Some("nonsense")).is_err());
    }

    #[test]
    fn oplog_validation_keeps_free_text_out() {
        let ok = OpEntry {
            target: Some("q-1".into()),
            source: Some("2001:db8:0:0::1".into()),
            ..OpEntry::new("host:root", OpAction::OrgAdded, OpResult::Success)
        }
        .validate()
        .unwrap();
        assert_eq!(ok.source.as_deref(), Some("2001:db8::1"));

        let long = "あ".repeat(MAX_TEXT_CHARS + 1);
        let bad: Vec<OpEntry> = vec![
            OpEntry::new("", OpAction::Logout, OpResult::Success),
            OpEntry::new("host:", OpAction::Logout, OpResult::Success),
            OpEntry::new("two words", OpAction::Logout, OpResult::Success),
            OpEntry::new(
                "x".repeat(MAX_ACTOR_CHARS + 1),
                OpAction::Logout,
                OpResult::Success,
            ),
            OpEntry {
                target: Some(long.clone()),
                ..OpEntry::new("u1", OpAction::Logout, OpResult::Success)
            },
            OpEntry {
                detail: Some(long),
                ..OpEntry::new("u1", OpAction::Logout, OpResult::Success)
            },
            OpEntry {
                detail: Some("line\nbreak".into()),
                ..OpEntry::new("u1", OpAction::Logout, OpResult::Success)
            },
            OpEntry {
                source: Some("my laptop".into()),
                ..OpEntry::new("u1", OpAction::Logout, OpResult::Success)
            },
        ];
        for entry in bad {
            let err = entry.clone().validate().unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidInput, "{entry:?}");
            // The message names the field, never echoes the value.
            assert!(!err.to_string().contains("あああ"));
            assert!(!err.to_string().contains("laptop"));
        }
        let fine = "あ".repeat(MAX_TEXT_CHARS);
        assert!(OpEntry {
            detail: Some(fine),
            ..OpEntry::new("u1", OpAction::Logout, OpResult::Success)
        }
        .validate()
        .is_ok());
    }
}
