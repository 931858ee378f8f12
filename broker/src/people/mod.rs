//! People: staff accounts, passwords, TOTP, sessions (R19, R20).
//!
//! [`People`] is the service the console listener's handlers and the host
//! CLI (`kakehashi-broker users …`) call. A login passes stages
//! ([`Stage`]): a right password opens a session at `password_change`
//! (temporary password), `totp_enrolment` (no authenticator yet) or `totp`;
//! a right code makes it `full`. Only `full` sessions may do work
//! ([`SessionView::require_full`]); role checks (R20) are the caller's.
//!
//! Rules (seed 002 ch. 2 §6(4), §7(2)): personal ids only; passwords of at
//! least 12 characters, not the user id, none of the last 5 again, hashed
//! with Argon2id ([`password`]); a temporary password changed at first
//! login; TOTP with replay refused ([`totp`]); 5 failures in a row lock the
//! account for 15 minutes ([`lockout`]), and a user id nobody has answers
//! the same way (its failures are counted too, under a keyed hash of the
//! id); sessions end after 15 idle minutes
//! or 8 hours ([`session`]); the previous successful and failed login are
//! shown after login.
//!
//! Secrets never leave in errors or logs: error messages name the rule
//! broken, never the value.

pub mod lockout;
pub mod password;
pub mod roles;
pub mod session;
mod store;
pub mod totp;
mod unknown_ids;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kakehashi_interfaces::datetime::format_canonical;
use kakehashi_interfaces::people::{
    EnrolmentAnswer, LoginEvent, NewUserRequest, Password, SessionAnswer, TotpCode, UserId,
    UserView,
};
use kakehashi_interfaces::{ErrorCode, InvalidInput, OrgId};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub use crate::config::PeopleConfig;
use crate::error::BrokerError;
use crate::keys::Keyring;
use crate::store::{timestamp, Pools};

pub use password::{Hasher, TemporaryPassword, WeakPassword};
pub use roles::{Grant, Privileges, Role};
pub use session::{SessionLimits, SessionToken, Stage};

use lockout::{LockPolicy, LockState};
use password::{HasherError, Replacement};
use store::UserRow;

/// How often a compare-and-set update of one user's (or one unknown id's)
/// failures is retried when concurrent logins keep changing the row.
const CAS_ATTEMPTS: usize = 8;

impl PeopleConfig {
    /// Refuses settings that would disable a protection.
    pub fn validate(&self) -> Result<(), PeopleError> {
        let bad = |reason: &str| Err(InvalidInput::new("people", reason.to_string()).into());
        if self.hash_workers == 0 {
            return bad("hash_workers must be at least 1");
        }
        if self.idle_timeout_secs == 0 || self.session_lifetime_secs == 0 {
            return bad("idle_timeout_secs and session_lifetime_secs must be positive");
        }
        if self.lockout_failures == 0 || self.lockout_secs == 0 {
            return bad("lockout_failures and lockout_secs must be positive");
        }
        Ok(())
    }

    /// The lockout policy.
    pub fn lock_policy(&self) -> LockPolicy {
        LockPolicy {
            max_failures: self.lockout_failures,
            lock_for: Duration::from_secs(self.lockout_secs),
        }
    }

    /// The session timeouts.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            idle: Duration::from_secs(self.idle_timeout_secs),
            lifetime: Duration::from_secs(self.session_lifetime_secs),
        }
    }
}

/// The operation log's actor for a login attempt as a user id nobody has.
pub const UNKNOWN_USER_ACTOR: &str = "unknown-user-id";

/// Everything that can go wrong for people. Messages are Japanese first,
/// then English, and never contain a password, code or secret.
#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    /// Unknown user or wrong password: the same answer, so user ids cannot
    /// be probed.
    #[error("利用者IDまたはパスワードが正しくありません / wrong user id or password")]
    WrongCredentials,
    /// A login as a user id nobody has: answered exactly as
    /// [`PeopleError::WrongCredentials`], told apart only so that what was
    /// typed is not kept in the operation log (it may be a password or an
    /// Individual Number typed into the wrong field).
    #[error("利用者IDまたはパスワードが正しくありません / wrong user id or password")]
    NoSuchUser,
    /// Locked after repeated failures.
    #[error(
        "連続して失敗したため {} までロックされています / the account is locked until {} after repeated failures",
        format_canonical(*until), format_canonical(*until)
    )]
    Locked {
        /// When the lock ends.
        until: OffsetDateTime,
    },
    /// Repeated failures as a user id nobody has: answered exactly as
    /// [`PeopleError::Locked`], so a lock does not tell whether an id
    /// exists; told apart only to keep what was typed out of the
    /// operation log, as with [`PeopleError::NoSuchUser`].
    #[error(
        "連続して失敗したため {} までロックされています / the account is locked until {} after repeated failures",
        format_canonical(*until), format_canonical(*until)
    )]
    NoSuchUserLocked {
        /// When the lock ends.
        until: OffsetDateTime,
    },
    /// Disabled by an administrator (told only to someone who gave the
    /// right password).
    #[error("このアカウントは無効です。管理者に連絡してください / this account is disabled; contact an administrator")]
    Disabled,
    /// The new password breaks the rule.
    #[error("パスワードの規則 / password rule: {0}")]
    WeakPassword(#[from] WeakPassword),
    /// The new password is one of the last five.
    #[error(
        "直近5回のパスワードは再び使えません / none of the last 5 passwords may be used again"
    )]
    PasswordReused,
    /// The TOTP code is wrong.
    #[error("確認コードが正しくありません / wrong code")]
    WrongCode,
    /// The TOTP code (or a later one) was already used.
    #[error("この確認コードは使用済みです。次のコードを入力してください / this code was already used; enter the next one")]
    CodeReused,
    /// The session is not at a stage that allows this.
    #[error(
        "この操作はセッションの段階 {stage} ではできません / not allowed at session stage {stage}"
    )]
    StageNotAllowed {
        /// Where the session stands.
        stage: Stage,
    },
    /// No session with this id, or it timed out.
    #[error("セッションがないか期限切れです。ログインし直してください / no session, or it expired; log in again")]
    SessionExpired,
    /// The password hashing queue is full.
    #[error("混み合っています。少し待ってから再試行してください / too many logins at once; retry shortly")]
    Busy,
    /// No such user (administration only; logins answer `WrongCredentials`).
    #[error("利用者 {0} はいません / no user {0}")]
    UnknownUser(UserId),
    /// The user id is taken.
    #[error("利用者ID {0} は既に使われています / user id {0} is already taken")]
    UserExists(UserId),
    /// The org is not registered.
    #[error("団体 {0} は登録されていません / org {0} is not registered")]
    UnknownOrg(OrgId),
    /// A code was sent at `totp_enrolment` before enrolment began.
    #[error("先にTOTPの登録を始めてください / start TOTP enrolment first")]
    EnrolmentNotStarted,
    /// A code was sent by a session whose enrolment another login of the
    /// same person replaced since.
    #[error("別のログインがTOTPの登録をやり直しました。新しく表示されるQRコードを読み取ってください / another login began TOTP enrolment again; scan the new code shown")]
    EnrolmentReplaced,
    /// Input failed validation.
    #[error("{0}")]
    InvalidInput(#[from] InvalidInput),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Stored data could not be used (malformed hash, undecryptable secret …).
    #[error("stored people data is unusable: {0}")]
    Corrupt(String),
}

impl PeopleError {
    /// The stable code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            PeopleError::WrongCredentials
            | PeopleError::NoSuchUser
            | PeopleError::WrongCode
            | PeopleError::CodeReused => ErrorCode::Unauthenticated,
            PeopleError::Locked { .. }
            | PeopleError::NoSuchUserLocked { .. }
            | PeopleError::Disabled => ErrorCode::AccountLocked,
            PeopleError::WeakPassword(_)
            | PeopleError::PasswordReused
            | PeopleError::UnknownOrg(_)
            | PeopleError::InvalidInput(_) => ErrorCode::InvalidInput,
            PeopleError::StageNotAllowed { .. } => ErrorCode::Forbidden,
            PeopleError::SessionExpired => ErrorCode::SessionRequired,
            PeopleError::Busy => ErrorCode::RateLimited,
            PeopleError::UnknownUser(_) => ErrorCode::NotFound,
            PeopleError::UserExists(_)
            | PeopleError::EnrolmentNotStarted
            | PeopleError::EnrolmentReplaced => ErrorCode::Conflict,
            PeopleError::Storage(_) | PeopleError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    /// Who a failed login is logged as: the user id typed, unless no user
    /// has it ([`UNKNOWN_USER_ACTOR`]).
    pub fn login_actor<'a>(&self, typed: &'a UserId) -> &'a str {
        match self {
            PeopleError::NoSuchUser | PeopleError::NoSuchUserLocked { .. } => UNKNOWN_USER_ACTOR,
            _ => typed.as_str(),
        }
    }

    /// Whether this is the "locked until …" answer (of a user or of an id
    /// nobody has), which the operation log records as a lock.
    pub fn is_lock(&self) -> bool {
        matches!(
            self,
            PeopleError::Locked { .. } | PeopleError::NoSuchUserLocked { .. }
        )
    }

    /// The message a person is shown (internal details left out).
    pub fn public_message(&self) -> String {
        match self {
            PeopleError::Storage(_) | PeopleError::Corrupt(_) => {
                "内部エラーです。何も変更されていません / internal error; nothing was changed"
                    .into()
            }
            other => other.to_string(),
        }
    }
}

impl From<HasherError> for PeopleError {
    fn from(e: HasherError) -> Self {
        match e {
            HasherError::Busy => PeopleError::Busy,
            HasherError::Stopped => PeopleError::Corrupt("password hashing did not finish".into()),
        }
    }
}

impl From<password::MalformedHash> for PeopleError {
    fn from(e: password::MalformedHash) -> Self {
        PeopleError::Corrupt(e.to_string())
    }
}

impl From<PeopleError> for BrokerError {
    fn from(e: PeopleError) -> Self {
        match e {
            PeopleError::Storage(e) => BrokerError::Storage(e),
            other => BrokerError::refused(other.code(), other.public_message()),
        }
    }
}

/// A user to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The personal user id.
    pub user_id: UserId,
    /// A registered org.
    pub org: OrgId,
    /// At least one role.
    pub roles: BTreeSet<Role>,
    /// Individual-Number privilege (R5).
    pub number_privilege: bool,
}

impl From<NewUserRequest> for NewUser {
    fn from(r: NewUserRequest) -> Self {
        NewUser {
            user_id: r.user_id,
            org: r.org,
            roles: r.roles,
            number_privilege: r.number_privilege,
        }
    }
}

/// Who a session belongs to and where it stands, as a handler sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The user.
    pub user_id: UserId,
    /// The user's org.
    pub org: OrgId,
    /// Roles and the Individual-Number privilege, read at this request.
    pub privileges: Privileges,
    /// What the session may do next.
    pub stage: Stage,
    /// The session's CSRF token (compare with [`SessionView::csrf_matches`]).
    pub csrf: String,
    /// The user's last successful login before the current login.
    pub last_login: Option<LoginEvent>,
    /// The user's last failed login or code before the current login.
    pub last_failed_login: Option<LoginEvent>,
}

impl std::fmt::Debug for SessionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionView")
            .field("user_id", &self.user_id)
            .field("org", &self.org)
            .field("privileges", &self.privileges)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl SessionView {
    /// Refuses unless the session is fully logged in.
    pub fn require_full(&self) -> Result<(), PeopleError> {
        if self.stage == Stage::Full {
            Ok(())
        } else {
            Err(PeopleError::StageNotAllowed { stage: self.stage })
        }
    }

    /// Whether a request's CSRF token is the session's own (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        session::csrf_matches(&self.csrf, presented)
    }

    /// The wire answer (`POST /api/session`, `GET /api/session` …).
    pub fn answer(&self) -> SessionAnswer {
        SessionAnswer {
            stage: self.stage,
            csrf_token: self.csrf.clone(),
            user_id: self.user_id.clone(),
            org: self.org.clone(),
            roles: self.privileges.roles.clone(),
            number_privilege: self.privileges.number_privilege,
            last_login: self.last_login.clone(),
            last_failed_login: self.last_failed_login.clone(),
        }
    }
}

/// A right password: the new session's id (for the cookie) and view.
#[derive(Debug)]
pub struct Login {
    /// The session id; set it as the cookie and forget it.
    pub token: SessionToken,
    /// The session.
    pub session: SessionView,
}

type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The people service.
#[derive(Clone)]
pub struct People {
    pools: Pools,
    /// Failed logins as user ids nobody has.
    unknown: Arc<unknown_ids::UnknownIds>,
    config: PeopleConfig,
    hasher: Hasher,
    clock: Clock,
}

impl std::fmt::Debug for People {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("People")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Refuses a session that is not enrolling a TOTP key.
fn enrolling(open: &OpenSession) -> Result<(), PeopleError> {
    if open.stage != Stage::TotpEnrolment || open.user.totp_enrolled {
        return Err(PeopleError::StageNotAllowed { stage: open.stage });
    }
    Ok(())
}

/// The TOTP secret stored (encrypted) for `user_id`.
fn stored_secret(
    keys: &Keyring,
    user_id: &UserId,
    cipher: &[u8],
) -> Result<totp::TotpSecret, PeopleError> {
    let plain = keys
        .decrypt(cipher, &totp::secret_context(user_id))
        .map_err(|_| corrupt("stored TOTP secret"))?;
    totp::TotpSecret::from_bytes(plain).map_err(|_| corrupt("stored TOTP secret"))
}

/// What a person scans to enrol `secret`: the otpauth URI and its QR code.
fn enrolment_answer(
    user_id: &UserId,
    secret: &totp::TotpSecret,
) -> Result<EnrolmentAnswer, PeopleError> {
    let uri = totp::otpauth_uri(user_id, secret);
    let qr_svg = totp::qr_svg(&uri).map_err(|_| corrupt("QR code of the otpauth URI"))?;
    Ok(EnrolmentAnswer {
        otpauth_uri: uri.as_str().to_owned(),
        qr_svg,
    })
}

fn corrupt(what: &str) -> PeopleError {
    PeopleError::Corrupt(what.to_string())
}

fn parse_time(text: &str) -> Result<OffsetDateTime, PeopleError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| corrupt("stored time"))
}

fn event(at: &Option<String>, from: &Option<String>) -> Result<Option<LoginEvent>, PeopleError> {
    let Some(at) = at else { return Ok(None) };
    Ok(Some(LoginEvent {
        at: kakehashi_interfaces::datetime::canonical(parse_time(at)?),
        from: match from {
            Some(text) => Some(text.parse().map_err(|_| corrupt("stored source address"))?),
            None => None,
        },
    }))
}

fn lock_state(user: &UserRow) -> Result<LockState, PeopleError> {
    stored_lock_state(
        user.failed_count,
        user.locked_until.as_deref(),
        user.last_failed_at.as_deref(),
    )
}

/// The lock state of stored failure columns (of a user, or of an unknown id).
fn stored_lock_state(
    failed_count: i64,
    locked_until: Option<&str>,
    last_failed_at: Option<&str>,
) -> Result<LockState, PeopleError> {
    Ok(LockState {
        failures: u32::try_from(failed_count).unwrap_or(u32::MAX),
        locked_until: locked_until.map(parse_time).transpose()?,
        last_failure: last_failed_at.map(parse_time).transpose()?,
    })
}

/// The domain of [`Keyring::lookup_hash`] under which a user id nobody has
/// is stored with its failures.
const UNKNOWN_ID_DOMAIN: &str = "kakehashi/people/unknown-user-id/v1";

fn stored_user_id(text: &str) -> Result<UserId, PeopleError> {
    UserId::new(text).map_err(|_| corrupt("stored user id"))
}

fn stored_org_id(text: &str) -> Result<OrgId, PeopleError> {
    OrgId::new(text).map_err(|_| corrupt("stored org id"))
}

fn unix_secs(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp()).unwrap_or(0)
}

fn user_view(
    user: &UserRow,
    roles: BTreeSet<Role>,
    now: OffsetDateTime,
) -> Result<UserView, PeopleError> {
    Ok(UserView {
        user_id: stored_user_id(&user.id)?,
        org: stored_org_id(&user.org_id)?,
        roles,
        number_privilege: user.number_privilege,
        disabled: user.disabled,
        temporary_password: user.password_temporary,
        totp_enrolled: user.totp_enrolled,
        locked_until: lockout::locked_at(&lock_state(user)?, now)
            .map(kakehashi_interfaces::datetime::canonical),
        last_login: event(&user.last_login_at, &user.last_login_from)?,
        last_failed_login: event(&user.last_failed_at, &user.last_failed_from)?,
        created_at: kakehashi_interfaces::datetime::canonical(parse_time(&user.created_at)?),
    })
}

/// A session found by its id, checked and refreshed.
struct OpenSession {
    hash: [u8; 32],
    row: store::SessionRow,
    user: UserRow,
    stage: Stage,
}

impl People {
    /// The service over the broker's pools (the tables come from migration
    /// 0102_people).
    pub fn new(pools: Pools, config: PeopleConfig) -> Result<Self, PeopleError> {
        config.validate()?;
        Ok(People {
            unknown: Arc::new(unknown_ids::UnknownIds::for_pools(&pools)),
            pools,
            hasher: Hasher::new(config.hash_workers, config.hash_queue),
            config,
            clock: Arc::new(OffsetDateTime::now_utc),
        })
    }

    /// The same service reading time from `clock` (tests of timeouts and
    /// lock expiry without waiting).
    pub fn with_clock(
        mut self,
        clock: impl Fn() -> OffsetDateTime + Send + Sync + 'static,
    ) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The settings in use.
    pub fn config(&self) -> &PeopleConfig {
        &self.config
    }

    fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }

    /// Adds a user with a temporary password, which is returned to be shown once.
    pub async fn add_user(&self, new: NewUser) -> Result<TemporaryPassword, PeopleError> {
        if new.roles.is_empty() {
            return Err(InvalidInput::new("roles", "must name at least one role").into());
        }
        let temporary = TemporaryPassword::generate();
        let phc = self
            .hasher
            .hash(Zeroizing::new(temporary.expose().to_owned()))
            .await?;
        let now = timestamp(self.now());
        match store::insert_user(
            &self.pools,
            new.user_id.as_str(),
            new.org.as_str(),
            &new.roles,
            new.number_privilege,
            &phc,
            &now,
        )
        .await?
        {
            store::Insert::Done => Ok(temporary),
            store::Insert::Exists => Err(PeopleError::UserExists(new.user_id)),
            store::Insert::UnknownOrg => Err(PeopleError::UnknownOrg(new.org)),
        }
    }

    /// Counts a failure of `user` at `now` (compare-and-set, retried while
    /// concurrent attempts change the row). Returns the lock's end when this
    /// failure locked the account.
    async fn count_failure(
        &self,
        mut user: UserRow,
        now: OffsetDateTime,
        from: Option<&str>,
    ) -> Result<Option<OffsetDateTime>, PeopleError> {
        let at = timestamp(now);
        let policy = self.config.lock_policy();
        for _ in 0..CAS_ATTEMPTS {
            let before = lock_state(&user)?;
            if let Some(until) = lockout::locked_at(&before, now) {
                // Someone else's failure locked it meanwhile.
                return Ok(Some(until));
            }
            let after = lockout::after_failure(&before, now, &policy);
            if store::record_failure(&self.pools, &user, &after, &at, from).await? {
                if after.locked_until.is_some() {
                    tracing::warn!(user = %user.id, "account locked after repeated failures");
                }
                return Ok(after.locked_until);
            }
            match store::user(&self.pools, &user.id).await? {
                Some(fresh) => user = fresh,
                None => return Ok(None),
            }
        }
        Err(PeopleError::Busy)
    }

    /// Refuses a login as a user id nobody has exactly as a wrong password
    /// of a user: the lock checked first, a password hash verified (so it
    /// takes as long), the failure counted (so after the same number of
    /// tries it answers "locked until …" with the same lock time).
    async fn refuse_unknown(
        &self,
        keys: &Keyring,
        user_id: &UserId,
        secret: Zeroizing<String>,
    ) -> Result<Login, PeopleError> {
        let id_hash = keys.lookup_hash(UNKNOWN_ID_DOMAIN, user_id.as_str().as_bytes());
        // Read once, before the hash, as a user's row is.
        let seen = self.unknown.read(&self.pools, &id_hash).await?;
        if let Some(until) = seen.locked_at(self.now()) {
            return Err(PeopleError::NoSuchUserLocked { until });
        }
        let _ = self.hasher.verify(None, secret).await?;
        let now = self.now();
        let policy = self.config.lock_policy();
        match self
            .unknown
            .fail(&self.pools, &id_hash, seen, now, &policy)
            .await?
        {
            Some(until) => {
                // The id typed is not logged: it may be a password.
                tracing::warn!("a user id nobody has is locked after repeated failures");
                Err(PeopleError::NoSuchUserLocked { until })
            }
            None => Err(PeopleError::NoSuchUser),
        }
    }

    /// Logs in with a password. A right one opens a session at the stage
    /// the account needs next; a wrong one counts toward the lockout, and
    /// so does any password for a user id nobody has (counted under its
    /// hash keyed with `keys`' lookup key), so both answer alike.
    pub async fn login(
        &self,
        keys: &Keyring,
        user_id: &UserId,
        password: &Password,
        source: Option<IpAddr>,
    ) -> Result<Login, PeopleError> {
        let secret = Zeroizing::new(password.expose().to_owned());
        let Some(user) = store::user(&self.pools, user_id.as_str()).await? else {
            return self.refuse_unknown(keys, user_id, secret).await;
        };
        let now = self.now();
        if let Some(until) = lockout::locked_at(&lock_state(&user)?, now) {
            return Err(PeopleError::Locked { until });
        }
        let right = self
            .hasher
            .verify(Some(user.password_hash.clone()), secret)
            .await??;
        // The failure is counted at the time the check ends.
        let now = self.now();
        if !right {
            let from = source.map(|ip| ip.to_string());
            return match self.count_failure(user, now, from.as_deref()).await? {
                Some(until) => Err(PeopleError::Locked { until }),
                None => Err(PeopleError::WrongCredentials),
            };
        }
        // Checks that ran at once all read the row before any counted its
        // failure: a lock set while this one ran holds for it too.
        let user = store::user(&self.pools, user_id.as_str())
            .await?
            .ok_or(PeopleError::NoSuchUser)?;
        if let Some(until) = lockout::locked_at(&lock_state(&user)?, now) {
            return Err(PeopleError::Locked { until });
        }
        // Only someone who knows the password learns the account is disabled.
        if user.disabled {
            return Err(PeopleError::Disabled);
        }
        let stage = session::stage_after_password(user.password_temporary, user.totp_enrolled);
        let token = SessionToken::generate();
        let csrf = session::new_csrf_token();
        let limits = self.config.session_limits();
        store::insert_session(
            &self.pools,
            &token.hash(),
            &user,
            stage,
            &csrf,
            source.map(|ip| ip.to_string()).as_deref(),
            &timestamp(now),
            &timestamp(now - limits.idle),
            &timestamp(now - limits.lifetime),
        )
        .await?;
        let roles = store::roles(&self.pools, &user.id).await?;
        let session = SessionView {
            user_id: stored_user_id(&user.id)?,
            org: stored_org_id(&user.org_id)?,
            privileges: Privileges {
                roles,
                number_privilege: user.number_privilege,
            },
            stage,
            csrf,
            last_login: event(&user.last_login_at, &user.last_login_from)?,
            last_failed_login: event(&user.last_failed_at, &user.last_failed_from)?,
        };
        Ok(Login { token, session })
    }

    /// Finds the session for `token`, ends it if it timed out or its user
    /// is disabled, and refreshes its last use.
    async fn open_session(&self, token: &str) -> Result<OpenSession, PeopleError> {
        let hash = session::token_hash(token).ok_or(PeopleError::SessionExpired)?;
        let row = store::session(&self.pools, &hash)
            .await?
            .ok_or(PeopleError::SessionExpired)?;
        let Some(user) = store::user(&self.pools, &row.user_id).await? else {
            store::delete_session(&self.pools, &hash).await?;
            return Err(PeopleError::SessionExpired);
        };
        if user.disabled {
            store::delete_user_sessions(&self.pools, &user.id).await?;
            return Err(PeopleError::Disabled);
        }
        let now = self.now();
        let created = parse_time(&row.created_at)?;
        let last_seen = parse_time(&row.last_seen_at)?;
        match session::liveness(created, last_seen, now, &self.config.session_limits()) {
            session::Liveness::Live { refresh } => {
                if refresh {
                    store::touch_session(&self.pools, &hash, &timestamp(now)).await?;
                }
            }
            session::Liveness::Idle | session::Liveness::Ended => {
                store::delete_session(&self.pools, &hash).await?;
                return Err(PeopleError::SessionExpired);
            }
        }
        let stage: Stage = row
            .stage
            .parse()
            .map_err(|_| corrupt("stored session stage"))?;
        Ok(OpenSession {
            hash,
            row,
            user,
            stage,
        })
    }

    async fn view(&self, open: &OpenSession, stage: Stage) -> Result<SessionView, PeopleError> {
        let roles = store::roles(&self.pools, &open.user.id).await?;
        Ok(SessionView {
            user_id: stored_user_id(&open.user.id)?,
            org: stored_org_id(&open.user.org_id)?,
            privileges: Privileges {
                roles,
                number_privilege: open.user.number_privilege,
            },
            stage,
            csrf: open.row.csrf_token.clone(),
            last_login: event(&open.row.prev_login_at, &open.row.prev_login_from)?,
            last_failed_login: event(&open.row.prev_failed_at, &open.row.prev_failed_from)?,
        })
    }

    /// The session for a cookie's `token`: who, which org, which roles
    /// (read now, so a grant or revoke applies at once), which stage. Ends
    /// sessions that timed out (`SessionExpired`) and refuses every session
    /// of a disabled user (`Disabled`).
    pub async fn authenticate(&self, token: &str) -> Result<SessionView, PeopleError> {
        let open = self.open_session(token).await?;
        self.view(&open, open.stage).await
    }

    /// Ends a session (unknown or expired ids are fine: the result is the same).
    pub async fn logout(&self, token: &str) -> Result<(), PeopleError> {
        if let Some(hash) = session::token_hash(token) {
            store::delete_session(&self.pools, &hash).await?;
        }
        Ok(())
    }

    /// Changes the password: required at `password_change`, allowed at
    /// `full`. The current password must be right (a wrong one counts
    /// toward the lockout); the new one must keep the rule and not be one of
    /// the last 5. The user's other sessions end.
    pub async fn change_password(
        &self,
        token: &str,
        current: &Password,
        new: &Password,
        source: Option<IpAddr>,
    ) -> Result<SessionView, PeopleError> {
        let open = self.open_session(token).await?;
        let next = session::stage_after_password_change(open.stage, open.user.totp_enrolled)
            .ok_or(PeopleError::StageNotAllowed { stage: open.stage })?;
        if let Some(until) = lockout::locked_at(&lock_state(&open.user)?, self.now()) {
            return Err(PeopleError::Locked { until });
        }
        let user_id = stored_user_id(&open.user.id)?;
        password::check_rule(&user_id, new.expose())?;
        let recent = store::recent_hashes(&self.pools, &open.user.id).await?;
        let old_phc = open.user.password_hash.clone();
        let outcome = self
            .hasher
            .replace(
                old_phc.clone(),
                Zeroizing::new(current.expose().to_owned()),
                recent,
                Zeroizing::new(new.expose().to_owned()),
            )
            .await??;
        let new_phc = match outcome {
            Replacement::Hashed(phc) => phc,
            Replacement::Reused => return Err(PeopleError::PasswordReused),
            Replacement::WrongCurrent => {
                let now = self.now();
                let OpenSession {
                    hash, row, user, ..
                } = open;
                let from = source.map(|ip| ip.to_string()).or(row.source);
                return match self.count_failure(user, now, from.as_deref()).await? {
                    Some(until) => {
                        store::delete_session(&self.pools, &hash).await?;
                        Err(PeopleError::Locked { until })
                    }
                    None => Err(PeopleError::WrongCredentials),
                };
            }
        };
        let now = timestamp(self.now());
        if !store::change_password(
            &self.pools,
            &open.user.id,
            &old_phc,
            &new_phc,
            &now,
            &open.hash,
            next,
        )
        .await?
        {
            // Reset or changed elsewhere meanwhile: the current login's view is stale.
            return Err(PeopleError::SessionExpired);
        }
        tracing::info!(user = %open.user.id, "password changed");
        self.view(&open, next).await
    }

    /// Begins TOTP enrolment (stage `totp_enrolment`): a new secret, stored
    /// encrypted, shown once as an otpauth URI and a QR code. Calling again
    /// replaces the secret not yet confirmed.
    pub async fn begin_enrolment(
        &self,
        keys: &Keyring,
        token: &str,
    ) -> Result<EnrolmentAnswer, PeopleError> {
        let open = self.open_session(token).await?;
        enrolling(&open)?;
        self.enrol_new(keys, &open).await
    }

    /// Makes and stores a new secret for the session `open` enrolling.
    async fn enrol_new(
        &self,
        keys: &Keyring,
        open: &OpenSession,
    ) -> Result<EnrolmentAnswer, PeopleError> {
        let user_id = stored_user_id(&open.user.id)?;
        let secret = totp::TotpSecret::generate();
        let cipher = keys
            .encrypt(secret.as_bytes(), &totp::secret_context(&user_id))
            .map_err(|e| PeopleError::Corrupt(format!("encrypting TOTP secret: {e}")))?;
        if !store::store_enrolment(
            &self.pools,
            &open.user.id,
            &cipher,
            &hex::encode(open.hash),
            &timestamp(self.now()),
        )
        .await?
        {
            return Err(PeopleError::StageNotAllowed { stage: open.stage });
        }
        enrolment_answer(&user_id, &secret)
    }

    /// The enrolment in progress at the login session `token`: the secret its
    /// [`People::begin_enrolment`] stored and no code has confirmed yet,
    /// shown again (a page reloaded, a code mistyped: the person may have
    /// scanned it already). One is begun when none is stored, or when
    /// another session began it: another login with the same password
    /// never reads a key the person may be about to confirm (it replaces
    /// it, which the person then notices).
    pub async fn enrolment(
        &self,
        keys: &Keyring,
        token: &str,
    ) -> Result<EnrolmentAnswer, PeopleError> {
        let open = self.open_session(token).await?;
        enrolling(&open)?;
        let ours = open.user.totp_enrolment_session.as_deref() == Some(&hex::encode(open.hash));
        let (Some(cipher), true) = (open.user.totp_cipher.as_deref(), ours) else {
            return self.enrol_new(keys, &open).await;
        };
        let user_id = stored_user_id(&open.user.id)?;
        let secret = stored_secret(keys, &user_id, cipher)?;
        enrolment_answer(&user_id, &secret)
    }

    /// Checks a TOTP code: at `totp_enrolment` it confirms the enrolment, at
    /// `totp` it completes the login. Either way the session becomes `full`
    /// under a new id (returned: set it as the cookie; the old one ends),
    /// the failure count resets and the login is recorded. A wrong code, or
    /// one of a step already used, counts toward the lockout; the lock ends
    /// the session.
    pub async fn confirm_totp(
        &self,
        keys: &Keyring,
        token: &str,
        code: &TotpCode,
        source: Option<IpAddr>,
    ) -> Result<Login, PeopleError> {
        let open = self.open_session(token).await?;
        match open.stage {
            Stage::TotpEnrolment if !open.user.totp_enrolled => {
                if open.user.totp_cipher.is_none() {
                    return Err(PeopleError::EnrolmentNotStarted);
                }
                // Only the session that began the enrolment confirms it: a
                // code of a key another login replaced is not counted as a
                // failure, and that login's key is not confirmed from here.
                if open.user.totp_enrolment_session.as_deref() != Some(&hex::encode(open.hash)) {
                    return Err(PeopleError::EnrolmentReplaced);
                }
            }
            Stage::Totp if open.user.totp_enrolled => {}
            stage => return Err(PeopleError::StageNotAllowed { stage }),
        }
        let user_id = stored_user_id(&open.user.id)?;
        // The login is recorded from where this step came, else from where the session began.
        let from = source
            .map(|ip| ip.to_string())
            .or_else(|| open.row.source.clone());
        let OpenSession {
            hash,
            row,
            mut user,
            stage,
        } = open;
        for _ in 0..CAS_ATTEMPTS {
            let now = self.now();
            if let Some(until) = lockout::locked_at(&lock_state(&user)?, now) {
                store::delete_session(&self.pools, &hash).await?;
                return Err(PeopleError::Locked { until });
            }
            let cipher = user
                .totp_cipher
                .as_deref()
                .ok_or(PeopleError::EnrolmentNotStarted)?;
            let secret = stored_secret(keys, &user_id, cipher)?;
            let last_used = user.totp_last_step.and_then(|s| u64::try_from(s).ok());
            match totp::verify(&secret, code.as_str(), unix_secs(now), last_used) {
                Ok(step) => {
                    let step = i64::try_from(step).map_err(|_| corrupt("TOTP step"))?;
                    let at = timestamp(now);
                    if store::record_full_login(&self.pools, &user, step, &at, from.as_deref())
                        .await?
                    {
                        // A new id for the full session: an id someone
                        // planted before the code was entered (session
                        // fixation) ends here.
                        let renewed = SessionToken::generate();
                        let new_hash = renewed.hash();
                        if !store::advance_session(
                            &self.pools,
                            &hash,
                            &new_hash,
                            stage,
                            Stage::Full,
                            &at,
                        )
                        .await?
                        {
                            return Err(PeopleError::SessionExpired);
                        }
                        tracing::info!(user = %user.id, enrolled = stage == Stage::TotpEnrolment, "login complete");
                        let open = OpenSession {
                            hash: new_hash,
                            row,
                            user,
                            stage: Stage::Full,
                        };
                        return Ok(Login {
                            session: self.view(&open, Stage::Full).await?,
                            token: renewed,
                        });
                    }
                    // Another attempt changed the row (perhaps used this very
                    // step): check again against the fresh row.
                }
                Err(refusal) => {
                    if refusal == totp::CodeRefusal::BadSecret {
                        return Err(corrupt("stored TOTP secret"));
                    }
                    if let Some(until) = self.count_failure(user, now, from.as_deref()).await? {
                        store::delete_session(&self.pools, &hash).await?;
                        return Err(PeopleError::Locked { until });
                    }
                    return Err(match refusal {
                        totp::CodeRefusal::Replayed => PeopleError::CodeReused,
                        _ => PeopleError::WrongCode,
                    });
                }
            }
            user = store::user(&self.pools, &user.id)
                .await?
                .ok_or(PeopleError::SessionExpired)?;
        }
        Err(PeopleError::Busy)
    }

    /// Gives a user a new temporary password (returned, to show once),
    /// clears TOTP, failures and lock, and ends the user's sessions.
    pub async fn reset(&self, user_id: &UserId) -> Result<TemporaryPassword, PeopleError> {
        let temporary = TemporaryPassword::generate();
        let phc = self
            .hasher
            .hash(Zeroizing::new(temporary.expose().to_owned()))
            .await?;
        if store::reset(&self.pools, user_id.as_str(), &phc, &timestamp(self.now())).await? {
            Ok(temporary)
        } else {
            Err(PeopleError::UnknownUser(user_id.clone()))
        }
    }

    /// Disables a user: no more logins, and every session ends at once.
    pub async fn disable(&self, user_id: &UserId) -> Result<UserView, PeopleError> {
        self.set_disabled(user_id, true).await
    }

    /// Enables a disabled user again.
    pub async fn enable(&self, user_id: &UserId) -> Result<UserView, PeopleError> {
        self.set_disabled(user_id, false).await
    }

    async fn set_disabled(
        &self,
        user_id: &UserId,
        disabled: bool,
    ) -> Result<UserView, PeopleError> {
        if !store::set_disabled(
            &self.pools,
            user_id.as_str(),
            disabled,
            &timestamp(self.now()),
        )
        .await?
        {
            return Err(PeopleError::UnknownUser(user_id.clone()));
        }
        self.user(user_id).await
    }

    /// Grants a role or the Individual-Number privilege (no change if held).
    pub async fn grant(&self, user_id: &UserId, grant: Grant) -> Result<UserView, PeopleError> {
        self.set_grant(user_id, grant, true).await
    }

    /// Revokes a role or the Individual-Number privilege (no change if not held).
    pub async fn revoke(&self, user_id: &UserId, grant: Grant) -> Result<UserView, PeopleError> {
        self.set_grant(user_id, grant, false).await
    }

    async fn set_grant(
        &self,
        user_id: &UserId,
        grant: Grant,
        on: bool,
    ) -> Result<UserView, PeopleError> {
        let now = timestamp(self.now());
        let found = match grant {
            Grant::Role(role) => {
                store::set_role(&self.pools, user_id.as_str(), role, on, &now).await?
            }
            Grant::NumberPrivilege => {
                store::set_number_privilege(&self.pools, user_id.as_str(), on, &now).await?
            }
        };
        if !found {
            return Err(PeopleError::UnknownUser(user_id.clone()));
        }
        self.user(user_id).await
    }

    /// One user as administrators see it.
    pub async fn user(&self, user_id: &UserId) -> Result<UserView, PeopleError> {
        let user = store::user(&self.pools, user_id.as_str())
            .await?
            .ok_or_else(|| PeopleError::UnknownUser(user_id.clone()))?;
        let roles = store::roles(&self.pools, &user.id).await?;
        user_view(&user, roles, self.now())
    }

    /// Every user, ordered by id. No hashes or secrets.
    pub async fn list(&self) -> Result<Vec<UserView>, PeopleError> {
        let users = store::all_users(&self.pools).await?;
        let mut roles = store::all_roles(&self.pools).await?;
        let now = self.now();
        users
            .iter()
            .map(|u| user_view(u, roles.remove(&u.id).unwrap_or_default(), now))
            .collect()
    }
}

/// The periodic upkeep of people's tables (the sweeper role's task):
/// deletes every session past its idle timeout or lifetime at `now`
/// (sessions are also checked on every use) and every count of failures
/// against unknown user ids that answers as none at `now`, so ids made up
/// by the million leave no rows behind. Returns how many rows went.
pub async fn sweep(
    pools: &Pools,
    config: &PeopleConfig,
    now: OffsetDateTime,
) -> Result<u64, PeopleError> {
    let limits = config.session_limits();
    let sessions = store::purge_sessions(
        pools,
        &timestamp(now - limits.idle),
        &timestamp(now - limits.lifetime),
    )
    .await?;
    // On one node the counts are in memory and the table stays empty: no
    // statement for SQLite's single writer.
    let unknown = if unknown_ids::in_database(pools) {
        store::purge_unknown_failures(pools, &timestamp(now)).await?
    } else {
        0
    };
    Ok(sessions + unknown)
}

#[cfg(test)]
mod tests;
