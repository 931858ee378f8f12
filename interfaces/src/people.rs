//! People on the console listener (R19, R20): logging in with a password and
//! TOTP, changing a password, enrolling TOTP, and administering users.
//!
//! Endpoints: `POST /api/session` ([`LoginRequest`] → [`SessionAnswer`]),
//! `GET /api/session` (→ [`SessionAnswer`]), `POST /api/session/password`
//! ([`PasswordChangeRequest`]), `POST /api/session/totp/enrolment`
//! (→ [`EnrolmentAnswer`]), `POST /api/session/totp` ([`TotpRequest`]),
//! `DELETE /api/session`; for administrators the user list ([`UserList`]),
//! adding a user ([`NewUserRequest`] → [`TemporaryPasswordAnswer`]) and
//! granting or revoking a privilege ([`Grant`]).
//!
//! Secrets (passwords, temporary passwords) travel as [`Password`], which is
//! wiped from memory on drop and never printed by `Debug`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::org::OrgId;
use crate::InvalidInput;
use schemars::gen::SchemaGenerator;
use schemars::schema::{InstanceType, Metadata, Schema, SchemaObject, StringValidation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The shortest password a person may choose, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted anywhere, in characters.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A personal user id: 3–64 characters of `a-z`, `0-9`, `.`, `_` and `-`.
/// Every id names one person; shared ids are not allowed (seed 002 ch. 2 §6(4)①).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl JsonSchema for UserId {
    fn schema_name() -> String {
        "UserId".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema(
            "Personal user id: 3-64 characters of a-z, 0-9, '.', '_' and '-'",
            "^[a-z0-9._-]{3,64}$",
        )
    }
}

impl UserId {
    /// Validates and wraps a user id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        let ok_len = (3..=64).contains(&s.len());
        let ok_chars = s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-'
        });
        if ok_len && ok_chars {
            Ok(Self(s))
        } else {
            Err(InvalidInput::new(
                "user_id",
                "must be 3-64 characters of a-z, 0-9, '.', '_' and '-'",
            ))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for UserId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What a person may do on the console (R20). The Individual-Number
/// privilege (R5) is separate: see [`Grant::NumberPrivilege`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Approves or rejects sensitive answers of the person's own org (R11).
    Operator,
    /// Searches and exports provision records, reads the operation log (R16, R17).
    Auditor,
    /// Manages orgs, users and the flow list (R8, R19).
    Administrator,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 3] = [Role::Operator, Role::Auditor, Role::Administrator];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Administrator => "administrator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InvalidInput::new("role", "must be operator, auditor or administrator"))
    }
}

/// How far a session has come. A session is only usable for work at `full`;
/// the earlier stages allow only the step they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStage {
    /// The password is temporary and must be changed first
    /// (`POST /api/session/password`).
    PasswordChange,
    /// No TOTP is enrolled yet: enrol (`POST /api/session/totp/enrolment`)
    /// and confirm with a code (`POST /api/session/totp`).
    TotpEnrolment,
    /// The password was right; a TOTP code is needed (`POST /api/session/totp`).
    Totp,
    /// Fully logged in.
    Full,
}

impl SessionStage {
    /// Every stage, in the order a login passes them.
    pub const ALL: [SessionStage; 4] = [
        SessionStage::PasswordChange,
        SessionStage::TotpEnrolment,
        SessionStage::Totp,
        SessionStage::Full,
    ];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStage::PasswordChange => "password_change",
            SessionStage::TotpEnrolment => "totp_enrolment",
            SessionStage::Totp => "totp",
            SessionStage::Full => "full",
        }
    }
}

impl std::fmt::Display for SessionStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SessionStage {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionStage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                InvalidInput::new(
                    "stage",
                    "must be password_change, totp_enrolment, totp or full",
                )
            })
    }
}

/// A password on the wire: 1 to 128 characters. Wiped from memory on drop;
/// `Debug` never shows it. The strength rule (at least 12 characters, not
/// the user id, not reused) is checked by the broker, which knows the user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password of 1 to [`MAX_PASSWORD_CHARS`] characters.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = Zeroizing::new(s.into());
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_PASSWORD_CHARS {
            return Err(InvalidInput::new("password", "must be 1 to 128 characters"));
        }
        Ok(Self(s))
    }

    /// The password text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(****)")
    }
}

impl TryFrom<String> for Password {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<Password> for String {
    fn from(p: Password) -> String {
        // The caller takes over the text (serialization); the wrapper's copy is wiped.
        p.0.as_str().to_owned()
    }
}

impl JsonSchema for Password {
    fn schema_name() -> String {
        "Password".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some(
                    "Password: 1-128 characters (a new password: at least 12, not the user id, \
                     none of the last 5)"
                        .to_string(),
                ),
                ..Default::default()
            })),
            instance_type: Some(InstanceType::String.into()),
            string: Some(Box::new(StringValidation {
                min_length: Some(1),
                max_length: Some(MAX_PASSWORD_CHARS as u32),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

/// A TOTP code: exactly 6 ASCII digits (RFC 6238, 30-second steps).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TotpCode(String);

impl TotpCode {
    /// Validates a code of 6 digits.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s))
        } else {
            Err(InvalidInput::new("code", "must be 6 digits"))
        }
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpCode(******)")
    }
}

impl TryFrom<String> for TotpCode {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<TotpCode> for String {
    fn from(c: TotpCode) -> String {
        c.0
    }
}

impl JsonSchema for TotpCode {
    fn schema_name() -> String {
        "TotpCode".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema("TOTP code (RFC 6238, SHA-1, 30 s): 6 digits", "^[0-9]{6}$")
    }
}

/// `POST /api/session`: log in with a user id and password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The personal user id.
    pub user_id: UserId,
    /// The password (or the temporary password at first login).
    pub password: Password,
}

/// One login attempt shown after login (seed 002 ch. 2 §7(2)④).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginEvent {
    /// When (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "crate::schema::DateTimeString")]
    pub at: OffsetDateTime,
    /// The source address, when known (absent for host commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IpAddr>,
}

/// The answer to `POST /api/session`, `GET /api/session`, a password change
/// and a TOTP step: where the session stands and whose it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAnswer {
    /// What the session may do next.
    pub stage: SessionStage,
    /// Send back as `X-CSRF-Token` on every state-changing call.
    pub csrf_token: String,
    /// Who is logged in.
    pub user_id: UserId,
    /// The person's org.
    pub org: OrgId,
    /// The person's roles.
    pub roles: BTreeSet<Role>,
    /// Whether the person may see Individual Numbers (R5).
    pub number_privilege: bool,
    /// The previous successful login, before the current login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_login: Option<LoginEvent>,
    /// The latest failed login or code, before the current login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_login: Option<LoginEvent>,
}

/// Leaves the CSRF token out.
impl std::fmt::Debug for SessionAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAnswer")
            .field("stage", &self.stage)
            .field("csrf_token", &"…")
            .field("user_id", &self.user_id)
            .field("org", &self.org)
            .field("roles", &self.roles)
            .field("number_privilege", &self.number_privilege)
            .field("last_login", &self.last_login)
            .field("last_failed_login", &self.last_failed_login)
            .finish()
    }
}

/// `POST /api/session/password`: replace the password (required at the
/// `password_change` stage, allowed at `full`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "PasswordChangeWire")]
pub struct PasswordChangeRequest {
    /// The password in use (the temporary one at first login).
    pub current_password: Password,
    /// The new password: at least 12 characters, not the user id, none of the last 5.
    pub new_password: Password,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChangeWire {
    current_password: Password,
    new_password: Password,
}

impl TryFrom<PasswordChangeWire> for PasswordChangeRequest {
    type Error = InvalidInput;
    fn try_from(w: PasswordChangeWire) -> Result<Self, Self::Error> {
        if w.new_password.expose().chars().count() < MIN_PASSWORD_CHARS {
            return Err(InvalidInput::new(
                "new_password",
                "must be at least 12 characters",
            ));
        }
        Ok(Self {
            current_password: w.current_password,
            new_password: w.new_password,
        })
    }
}

/// `POST /api/session/totp`: the code of the authenticator app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpRequest {
    /// Six digits.
    pub code: TotpCode,
}

/// The answer to `POST /api/session/totp/enrolment`: the secret to put in an
/// authenticator app, as a URI and as a QR code. Shown once; confirm with a
/// code to finish enrolment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentAnswer {
    /// `otpauth://totp/Kakehashi:<user_id>?secret=…&issuer=Kakehashi&…`
    pub otpauth_uri: String,
    /// The same URI as a QR code, an SVG document.
    pub qr_svg: String,
}

impl std::fmt::Debug for EnrolmentAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrolmentAnswer(****)")
    }
}

/// One user, as administrators see it. Never holds a password hash or TOTP secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserView {
    /// The personal user id.
    pub user_id: UserId,
    /// The person's org.
    pub org: OrgId,
    /// Roles.
    pub roles: BTreeSet<Role>,
    /// Individual-Number privilege (R5).
    pub number_privilege: bool,
    /// Disabled users cannot log in; their sessions end at once.
    pub disabled: bool,
    /// The password is temporary: it must be changed at the next login.
    pub temporary_password: bool,
    /// A TOTP authenticator is enrolled.
    pub totp_enrolled: bool,
    /// Locked after repeated failures until this instant.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<crate::schema::DateTimeString>")]
    pub locked_until: Option<OffsetDateTime>,
    /// The latest successful login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_login: Option<LoginEvent>,
    /// The latest failed login or code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_login: Option<LoginEvent>,
    /// When the user was added.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "crate::schema::DateTimeString")]
    pub created_at: OffsetDateTime,
}

/// The user list, ordered by user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserList {
    /// Users.
    pub users: Vec<UserView>,
}

/// Adding a user: the broker answers with a temporary password, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "NewUserWire")]
pub struct NewUserRequest {
    /// The personal user id.
    pub user_id: UserId,
    /// A registered org.
    pub org: OrgId,
    /// At least one role.
    pub roles: BTreeSet<Role>,
    /// Individual-Number privilege (R5).
    #[serde(default)]
    pub number_privilege: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserWire {
    user_id: UserId,
    org: OrgId,
    roles: Vec<Role>,
    #[serde(default)]
    number_privilege: bool,
}

impl TryFrom<NewUserWire> for NewUserRequest {
    type Error = InvalidInput;
    fn try_from(w: NewUserWire) -> Result<Self, Self::Error> {
        let roles: BTreeSet<Role> = w.roles.iter().copied().collect();
        if roles.is_empty() {
            return Err(InvalidInput::new("roles", "must name at least one role"));
        }
        if roles.len() != w.roles.len() {
            return Err(InvalidInput::new("roles", "must not repeat a role"));
        }
        Ok(Self {
            user_id: w.user_id,
            org: w.org,
            roles,
            number_privilege: w.number_privilege,
        })
    }
}

/// A temporary password issued when a user is added or reset; it must be
/// changed at first login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemporaryPasswordAnswer {
    /// Whose password.
    pub user_id: UserId,
    /// The temporary password, shown once.
    pub temporary_password: Password,
}

/// One privilege to grant or revoke: a role (`{"role": "operator"}`) or the
/// Individual-Number privilege (`{"number_privilege": true}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "GrantWire", into = "GrantWire")]
pub enum Grant {
    /// A role.
    Role(Role),
    /// The Individual-Number privilege (R5).
    NumberPrivilege,
}

/// The wire form of [`Grant`]: exactly one of the two fields.
#[derive(Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GrantWire {
    /// A role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// `true` for the Individual-Number privilege.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    number_privilege: bool,
}

impl TryFrom<GrantWire> for Grant {
    type Error = InvalidInput;
    fn try_from(w: GrantWire) -> Result<Self, Self::Error> {
        match (w.role, w.number_privilege) {
            (Some(role), false) => Ok(Grant::Role(role)),
            (None, true) => Ok(Grant::NumberPrivilege),
            _ => Err(InvalidInput::new(
                "grant",
                "must name exactly one of role or number_privilege: true",
            )),
        }
    }
}

impl From<Grant> for GrantWire {
    fn from(g: Grant) -> Self {
        match g {
            Grant::Role(role) => GrantWire {
                role: Some(role),
                number_privilege: false,
            },
            Grant::NumberPrivilege => GrantWire {
                role: None,
                number_privilege: true,
            },
        }
    }
}

impl JsonSchema for Grant {
    fn schema_name() -> String {
        "Grant".to_string()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        let mut schema = SchemaObject::from(GrantWire::json_schema(gen));
        schema.metadata().description = Some(
            "A privilege: {\"role\": R} or {\"number_privilege\": true}, exactly one".to_string(),
        );
        schema.into()
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::Role(role) => write!(f, "role {role}"),
            Grant::NumberPrivilege => f.write_str("number_privilege"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        for ok in ["abc", "taro.yamada", "u_1-2", &"a".repeat(64)] {
            assert!(UserId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Taro",
            "taro yamada",
            "太郎abc",
            "a@b.c",
            &"a".repeat(65),
        ] {
            assert!(UserId::new(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<UserId>("\"ab\"").is_err());
    }

    #[test]
    fn password_is_never_shown_and_bounded() {
        let p = Password::new("correct horse battery").unwrap();
        assert_eq!(format!("{p:?}"), "Password(****)");
        let req: LoginRequest =
            serde_json::from_str(r#"{"user_id":"taro","password":"correct horse battery"}"#)
                .unwrap();
        assert!(!format!("{req:?}").contains("horse"));
        assert!(Password::new("").is_err());
        assert!(Password::new("x".repeat(129)).is_err());
        assert!(Password::new("é".repeat(128)).is_ok());
        assert!(serde_json::from_str::<LoginRequest>(
            r#"{"user_id":"taro","password":"p","extra":1}"#
        )
        .is_err());
    }

    #[test]
    fn password_change_needs_a_long_new_password() {
        let short = r#"{"current_password":"x","new_password":"elevenchars"}"#;
        assert!(serde_json::from_str::<PasswordChangeRequest>(short).is_err());
        let ok = r#"{"current_password":"x","new_password":"twelve chars"}"#;
        assert!(serde_json::from_str::<PasswordChangeRequest>(ok).is_ok());
    }

    #[test]
    fn totp_codes() {
        assert!(serde_json::from_str::<TotpRequest>(r#"{"code":"012345"}"#).is_ok());
        for bad in ["12345", "1234567", "12345a", "123 456", "١٢٣٤٥٦"] {
            assert!(TotpCode::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_and_stages_round_trip() {
        for role in Role::ALL {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        for stage in SessionStage::ALL {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
            assert_eq!(stage.as_str().parse::<SessionStage>().unwrap(), stage);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn grants() {
        let g: Grant = serde_json::from_str(r#"{"role":"auditor"}"#).unwrap();
        assert_eq!(g, Grant::Role(Role::Auditor));
        let g: Grant = serde_json::from_str(r#"{"number_privilege":true}"#).unwrap();
        assert_eq!(g, Grant::NumberPrivilege);
        assert_eq!(
            serde_json::to_string(&Grant::NumberPrivilege).unwrap(),
            r#"{"number_privilege":true}"#
        );
        for bad in [
            r#"{}"#,
            r#"{"number_privilege":false}"#,
            r#"{"role":"operator","number_privilege":true}"#,
            r#"{"role":"root"}"#,
        ] {
            assert!(serde_json::from_str::<Grant>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_user_needs_distinct_roles() {
        let ok = r#"{"user_id":"taro","org":"city-a","roles":["operator"]}"#;
        let u: NewUserRequest = serde_json::from_str(ok).unwrap();
        assert!(!u.number_privilege);
        for bad in [
            r#"{"user_id":"taro","org":"city-a","roles":[]}"#,
            r#"{"user_id":"taro","org":"city-a","roles":["operator","operator"]}"#,
        ] {
            assert!(
                serde_json::from_str::<NewUserRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn session_answer_round_trips() {
        let answer = SessionAnswer {
            stage: SessionStage::Full,
            csrf_token: "t".into(),
            user_id: UserId::new("taro").unwrap(),
            org: OrgId::new("city-a").unwrap(),
            roles: [Role::Operator].into_iter().collect(),
            number_privilege: false,
            last_login: Some(LoginEvent {
                at: time::macros::datetime!(2026-04-01 09:00:00 UTC),
                from: Some("192.0.2.1".parse().unwrap()),
            }),
            last_failed_login: None,
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert!(json.contains(r#""last_login":{"at":"2026-04-01T09:00:00Z","from":"192.0.2.1"}"#));
        assert!(!json.contains("last_failed_login"));
        assert_eq!(
            serde_json::from_str::<SessionAnswer>(&json).unwrap(),
            answer
        );
    }
}
