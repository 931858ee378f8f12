//! The people service on a real database (a SQLite file; PostgreSQL too
//! when `KAKEHASHI_TEST_PG_URL` is set), with time read from a clock the
//! test moves. No test prints a password, code or secret: comparisons of
//! secrets use `assert!` without the values.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kakehashi_interfaces::people::{Password, TotpCode, UserId};
use kakehashi_interfaces::{ErrorCode, OrgId, OrgKind};
use tempfile::TempDir;
use time::macros::datetime;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::*;
use crate::keys::Keyring;
use crate::store::{NewOrg, Store};

struct Env {
    _dir: TempDir,
    _store: Arc<dyn Store>,
    people: People,
    keys: Arc<Keyring>,
    clock: Arc<Mutex<OffsetDateTime>>,
}

impl Env {
    fn advance(&self, by: Duration) {
        let mut now = self.clock.lock().unwrap();
        *now += by;
    }

    fn now(&self) -> OffsetDateTime {
        *self.clock.lock().unwrap()
    }

    /// Logs in as `id` with `password`, from no known address.
    async fn login(&self, id: &str, password: &Password) -> Result<Login, PeopleError> {
        self.people
            .login(&self.keys, &uid(id), password, None)
            .await
    }
}

const START: OffsetDateTime = datetime!(2026-04-01 09:00:00 UTC);

async fn env_on(store: Arc<dyn Store>, dir: TempDir) -> Env {
    for org in ["city-a", "union-x"] {
        store
            .add_org(&NewOrg {
                id: OrgId::new(org).unwrap(),
                kind: OrgKind::Municipality,
                name: org.into(),
                cert_fingerprint: None,
            })
            .await
            .unwrap();
    }
    let keys = Keyring::open(&dir.path().join("keys"), store.pools())
        .await
        .unwrap();
    let clock = Arc::new(Mutex::new(START));
    let read = clock.clone();
    let people = People::new(store.pools(), PeopleConfig::default())
        .unwrap()
        .with_clock(move || *read.lock().unwrap());
    Env {
        _dir: dir,
        _store: store,
        people,
        keys: Arc::new(keys),
        clock,
    }
}

async fn sqlite_env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::SqliteStore::open(&dir.path().join("people.db"))
        .await
        .unwrap();
    env_on(Arc::new(store), dir).await
}

/// A fresh PostgreSQL database, when the suite is given a server.
async fn pg_env() -> Option<Env> {
    let store = crate::store::test_databases::fresh_postgres("people").await?;
    Some(env_on(Arc::new(store), tempfile::tempdir().unwrap()).await)
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn pw(s: &str) -> Password {
    Password::new(s).unwrap()
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn operator(id: &str) -> NewUser {
    NewUser {
        user_id: uid(id),
        org: OrgId::new("city-a").unwrap(),
        roles: [Role::Operator].into_iter().collect(),
        number_privilege: false,
    }
}

/// The TOTP secret an authenticator app would read from the enrolment URI.
fn secret_from_uri(uri: &str) -> totp::TotpSecret {
    let encoded = uri
        .split("secret=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap();
    let bytes = totp_rs::Secret::Encoded(encoded.to_string())
        .to_bytes()
        .unwrap();
    totp::TotpSecret::from_bytes(Zeroizing::new(bytes)).unwrap()
}

fn code_at(secret: &totp::TotpSecret, at: OffsetDateTime) -> TotpCode {
    TotpCode::new(secret.code_at(at.unix_timestamp() as u64).unwrap()).unwrap()
}

/// Adds `id`, changes the temporary password to `password` and enrols
/// TOTP; returns the secret and the full session's token.
async fn enrolled(env: &Env, id: &str, password: &str) -> (totp::TotpSecret, SessionToken) {
    let temporary = env.people.add_user(operator(id)).await.unwrap();
    let login = env
        .people
        .login(
            &env.keys,
            &uid(id),
            &pw(temporary.expose()),
            ip("192.0.2.10"),
        )
        .await
        .unwrap();
    let token = login.token;
    env.people
        .change_password(token.expose(), &pw(temporary.expose()), &pw(password), None)
        .await
        .unwrap();
    let enrolment = env
        .people
        .begin_enrolment(&env.keys, token.expose())
        .await
        .unwrap();
    let secret = secret_from_uri(&enrolment.otpauth_uri);
    let view = env
        .people
        .confirm_totp(
            &env.keys,
            token.expose(),
            &code_at(&secret, env.now()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(view.session.stage, Stage::Full);
    (secret, view.token)
}

async fn whole_login_flow(env: Env) {
    let people = &env.people;
    let temporary = people.add_user(operator("taro.yamada")).await.unwrap();
    assert!(matches!(
        people.add_user(operator("taro.yamada")).await,
        Err(PeopleError::UserExists(_))
    ));

    // First login: the temporary password must be changed first.
    let login = people
        .login(
            &env.keys,
            &uid("taro.yamada"),
            &pw(temporary.expose()),
            ip("192.0.2.10"),
        )
        .await
        .unwrap();
    let token = login.token.expose().to_owned();
    assert_eq!(login.session.stage, Stage::PasswordChange);
    assert_eq!(login.session.last_login, None);
    assert!(login
        .session
        .csrf_matches(&login.session.answer().csrf_token));
    let view = people.authenticate(&token).await.unwrap();
    assert_eq!(view.stage, Stage::PasswordChange);
    assert!(matches!(
        view.require_full(),
        Err(PeopleError::StageNotAllowed { .. })
    ));
    assert!(matches!(
        people.begin_enrolment(&env.keys, &token).await,
        Err(PeopleError::StageNotAllowed {
            stage: Stage::PasswordChange
        })
    ));

    // The rule, then reuse of the temporary password, then a good one.
    let err = people
        .change_password(&token, &pw(temporary.expose()), &pw("short"), None)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        PeopleError::WeakPassword(WeakPassword::TooShort)
    ));
    assert_eq!(err.code(), ErrorCode::InvalidInput);
    assert!(matches!(
        people
            .change_password(
                &token,
                &pw(temporary.expose()),
                &pw(temporary.expose()),
                None
            )
            .await,
        Err(PeopleError::PasswordReused)
    ));
    assert!(matches!(
        people
            .change_password(
                &token,
                &pw("not the password"),
                &pw("kawaguchi 2026 spring"),
                None
            )
            .await,
        Err(PeopleError::WrongCredentials)
    ));
    let view = people
        .change_password(
            &token,
            &pw(temporary.expose()),
            &pw("kawaguchi 2026 spring"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(view.stage, Stage::TotpEnrolment);

    // Enrolment: a code before it began is refused, then URI and QR code.
    let code = TotpCode::new("123456").unwrap();
    assert!(matches!(
        people.confirm_totp(&env.keys, &token, &code, None).await,
        Err(PeopleError::EnrolmentNotStarted)
    ));
    let enrolment = people.begin_enrolment(&env.keys, &token).await.unwrap();
    assert!(enrolment
        .otpauth_uri
        .starts_with("otpauth://totp/Kakehashi:taro.yamada?secret="));
    assert!(enrolment.otpauth_uri.contains("&issuer=Kakehashi"));
    assert!(enrolment.qr_svg.contains("<svg"));
    // Shown again (a reload, a mistyped code), it is the same key; asked
    // for anew, it is another.
    let shown_again = people.enrolment(&env.keys, &token).await.unwrap();
    assert!(shown_again.otpauth_uri == enrolment.otpauth_uri);
    // Another login with the same password is not shown the key this
    // session is enrolling: it is given a new one, which replaces it.
    let other = env
        .login("taro.yamada", &pw("kawaguchi 2026 spring"))
        .await
        .unwrap();
    assert_eq!(other.session.stage, Stage::TotpEnrolment);
    let theirs = people
        .enrolment(&env.keys, other.token.expose())
        .await
        .unwrap();
    assert!(theirs.otpauth_uri != enrolment.otpauth_uri);
    let again = people
        .enrolment(&env.keys, other.token.expose())
        .await
        .unwrap();
    assert!(again.otpauth_uri == theirs.otpauth_uri);
    // A code of the key that was replaced is not a failure: the first login is
    // told to scan the new key it is shown next.
    let failures = || async {
        store::user(&env.people.pools, "taro.yamada")
            .await
            .unwrap()
            .unwrap()
            .failed_count
    };
    let before = failures().await;
    let stale = code_at(&secret_from_uri(&enrolment.otpauth_uri), env.now());
    assert!(matches!(
        people.confirm_totp(&env.keys, &token, &stale, None).await,
        Err(PeopleError::EnrolmentReplaced)
    ));
    assert_eq!(failures().await, before);
    let replaced = people.begin_enrolment(&env.keys, &token).await.unwrap();
    assert!(replaced.otpauth_uri != enrolment.otpauth_uri);
    let enrolment = people.enrolment(&env.keys, &token).await.unwrap();
    assert!(enrolment.otpauth_uri == replaced.otpauth_uri);
    let secret = secret_from_uri(&enrolment.otpauth_uri);
    let first_code = code_at(&secret, env.now());
    let done = people
        .confirm_totp(&env.keys, &token, &first_code, ip("192.0.2.10"))
        .await
        .unwrap();
    assert_eq!(done.session.stage, Stage::Full);
    assert!(done.session.require_full().is_ok());
    // The full session has a new id; the one that came before it ended
    // (an id planted before the code was entered is worth nothing).
    assert!(matches!(
        people.authenticate(&token).await,
        Err(PeopleError::SessionExpired)
    ));
    let token = done.token.expose().to_owned();
    assert_eq!(
        people.authenticate(&token).await.unwrap().stage,
        Stage::Full
    );
    assert!(matches!(
        people.begin_enrolment(&env.keys, &token).await,
        Err(PeopleError::StageNotAllowed { stage: Stage::Full })
    ));
    // Once enrolled, the key is never shown again.
    assert!(matches!(
        people.enrolment(&env.keys, &token).await,
        Err(PeopleError::StageNotAllowed { stage: Stage::Full })
    ));
    // The secret is stored encrypted, not in clear or base32.
    let stored = store::user(&env.people.pools, "taro.yamada")
        .await
        .unwrap()
        .unwrap();
    let cipher = stored.totp_cipher.unwrap();
    assert!(!cipher
        .windows(secret.as_bytes().len())
        .any(|w| w == secret.as_bytes()));
    assert!(!stored.password_hash.contains("kawaguchi"));

    people.logout(&token).await.unwrap();
    assert!(matches!(
        people.authenticate(&token).await,
        Err(PeopleError::SessionExpired)
    ));

    // A later login: password, then a code. The first login is shown.
    env.advance(Duration::from_secs(5));
    let login = people
        .login(
            &env.keys,
            &uid("taro.yamada"),
            &pw("kawaguchi 2026 spring"),
            ip("198.51.100.7"),
        )
        .await
        .unwrap();
    assert_eq!(login.session.stage, Stage::Totp);
    let shown = login.session.last_login.clone().unwrap();
    assert_eq!(shown.at, START);
    assert_eq!(shown.from, ip("192.0.2.10"));
    let token = login.token.expose().to_owned();
    // The code already used is refused (replay), and counts as a failure.
    let err = people
        .confirm_totp(&env.keys, &token, &first_code, None)
        .await
        .unwrap_err();
    assert!(matches!(err, PeopleError::CodeReused));
    assert_eq!(err.code(), ErrorCode::Unauthenticated);
    let view = people
        .confirm_totp(
            &env.keys,
            &token,
            &code_at(&secret, env.now() + Duration::from_secs(30)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(view.session.stage, Stage::Full);
    let token = view.token.expose().to_owned();
    // The view shows the logins before the current login; the user's record
    // now has this login (from where the session began) and the replay as
    // the last failure.
    assert_eq!(view.session.last_login.unwrap().from, ip("192.0.2.10"));
    let listed = people.user(&uid("taro.yamada")).await.unwrap();
    assert_eq!(listed.last_login.unwrap().from, ip("198.51.100.7"));
    assert!(listed.last_failed_login.is_some());
    assert!(listed.totp_enrolled && !listed.temporary_password);

    // Changing the password at full ends the other sessions.
    let other = env
        .login("taro.yamada", &pw("kawaguchi 2026 spring"))
        .await
        .unwrap();
    people
        .change_password(
            &token,
            &pw("kawaguchi 2026 spring"),
            &pw("kawaguchi 2026 summer"),
            None,
        )
        .await
        .unwrap();
    assert!(people.authenticate(&token).await.is_ok());
    assert!(matches!(
        people.authenticate(other.token.expose()).await,
        Err(PeopleError::SessionExpired)
    ));
}

async fn lockout_and_expiry(env: Env) {
    let people = &env.people;
    let temporary = people.add_user(operator("hanako")).await.unwrap();
    let wrong = pw("not the password at all");
    // Unknown users and wrong passwords get the same answer.
    let unknown = env.login("nobody", &wrong).await.unwrap_err();
    assert!(matches!(unknown, PeopleError::NoSuchUser));
    assert_eq!(unknown.login_actor(&uid("nobody")), "unknown-user-id");
    for i in 1..=4 {
        let err = people
            .login(&env.keys, &uid("hanako"), &wrong, ip("203.0.113.9"))
            .await
            .unwrap_err();
        assert!(matches!(err, PeopleError::WrongCredentials), "failure {i}");
        assert_eq!(err.public_message(), unknown.public_message());
        assert_eq!(err.code(), unknown.code());
        assert_eq!(err.login_actor(&uid("hanako")), "hanako");
    }
    let err = people
        .login(&env.keys, &uid("hanako"), &wrong, ip("203.0.113.9"))
        .await
        .unwrap_err();
    let until = START + Duration::from_secs(15 * 60);
    assert!(matches!(err, PeopleError::Locked { until: u } if u == until));
    assert_eq!(err.code(), ErrorCode::AccountLocked);
    assert!(err.public_message().contains("2026-04-01T09:15:00Z"));
    // Locked: even the right password is refused.
    assert!(matches!(
        env.login("hanako", &pw(temporary.expose())).await,
        Err(PeopleError::Locked { .. })
    ));
    let listed = people.user(&uid("hanako")).await.unwrap();
    assert_eq!(listed.locked_until, Some(until));
    assert_eq!(listed.last_failed_login.unwrap().from, ip("203.0.113.9"));
    // One second before the end it still holds; at the end it is over.
    env.advance(Duration::from_secs(15 * 60 - 1));
    assert!(matches!(
        env.login("hanako", &pw(temporary.expose())).await,
        Err(PeopleError::Locked { .. })
    ));
    env.advance(Duration::from_secs(1));
    let login = env.login("hanako", &pw(temporary.expose())).await.unwrap();
    assert_eq!(login.session.stage, Stage::PasswordChange);
    assert_eq!(
        people.user(&uid("hanako")).await.unwrap().locked_until,
        None
    );

    // Wrong TOTP codes count too, and the lock ends the half-done session.
    let (secret, _) = enrolled(&env, "jiro", "jiro's long password").await;
    let login = env
        .login("jiro", &pw("jiro's long password"))
        .await
        .unwrap();
    let token = login.token.expose().to_owned();
    let right = code_at(&secret, env.now() + Duration::from_secs(30));
    let bad = TotpCode::new(if right.as_str() == "000000" {
        "000001"
    } else {
        "000000"
    })
    .unwrap();
    for _ in 0..4 {
        assert!(matches!(
            people.confirm_totp(&env.keys, &token, &bad, None).await,
            Err(PeopleError::WrongCode)
        ));
    }
    // A wrong password between codes counts as well (the fifth failure).
    let err = env
        .login("jiro", &pw("jiro's wrong password"))
        .await
        .unwrap_err();
    assert!(matches!(err, PeopleError::Locked { .. }));
    assert!(matches!(
        people.confirm_totp(&env.keys, &token, &right, None).await,
        Err(PeopleError::Locked { .. })
    ));
    assert!(matches!(
        people.authenticate(&token).await,
        Err(PeopleError::SessionExpired)
    ));

    // A reset clears lock and TOTP; the new temporary password works at once.
    let temporary = people.reset(&uid("jiro")).await.unwrap();
    let view = people.user(&uid("jiro")).await.unwrap();
    assert!(view.locked_until.is_none() && !view.totp_enrolled && view.temporary_password);
    let login = env.login("jiro", &pw(temporary.expose())).await.unwrap();
    assert_eq!(login.session.stage, Stage::PasswordChange);
    let view = people
        .change_password(
            login.token.expose(),
            &pw(temporary.expose()),
            &pw("jiro's second password"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(view.stage, Stage::TotpEnrolment);
}

async fn timeouts_and_disabling(env: Env) {
    let people = &env.people;
    let (_, token) = enrolled(&env, "saburo", "saburo's long password").await;
    let token = token.expose().to_owned();
    // Used every 14 minutes, the session lives on...
    for _ in 0..3 {
        env.advance(Duration::from_secs(14 * 60));
        assert!(people.authenticate(&token).await.is_ok());
    }
    // ...15 idle minutes end it.
    env.advance(Duration::from_secs(15 * 60));
    assert!(matches!(
        people.authenticate(&token).await,
        Err(PeopleError::SessionExpired)
    ));
    assert_eq!(
        PeopleError::SessionExpired.code(),
        ErrorCode::SessionRequired
    );

    // However busy, a session ends 8 hours after login.
    // (A second session, never used, is left for the purge below.)
    env.login("saburo", &pw("saburo's long password"))
        .await
        .unwrap();
    let login = env
        .login("saburo", &pw("saburo's long password"))
        .await
        .unwrap();
    let token = login.token.expose().to_owned();
    let mut used = Duration::ZERO;
    while used < Duration::from_secs(8 * 60 * 60 - 10 * 60) {
        env.advance(Duration::from_secs(10 * 60));
        used += Duration::from_secs(10 * 60);
        assert!(people.authenticate(&token).await.is_ok(), "at {used:?}");
    }
    env.advance(Duration::from_secs(10 * 60));
    assert!(matches!(
        people.authenticate(&token).await,
        Err(PeopleError::SessionExpired)
    ));
    assert!(
        sweep(&env._store.pools(), people.config(), env.now())
            .await
            .unwrap()
            >= 1
    );

    // Disabling ends live sessions at once and refuses logins.
    let login = env
        .login("saburo", &pw("saburo's long password"))
        .await
        .unwrap();
    let token = login.token.expose().to_owned();
    let view = people.disable(&uid("saburo")).await.unwrap();
    assert!(view.disabled);
    // The session is gone at once: the next request must log in again.
    let err = people.authenticate(&token).await.unwrap_err();
    assert!(matches!(err, PeopleError::SessionExpired));
    let err = env
        .login("saburo", &pw("saburo's long password"))
        .await
        .unwrap_err();
    assert!(matches!(err, PeopleError::Disabled));
    assert_eq!(err.code(), ErrorCode::AccountLocked);
    // A wrong password does not reveal that the account is disabled.
    assert!(matches!(
        env.login("saburo", &pw("saburo's wrong password")).await,
        Err(PeopleError::WrongCredentials)
    ));
    people.enable(&uid("saburo")).await.unwrap();
    assert!(matches!(
        people.authenticate(&token).await,
        Err(PeopleError::SessionExpired)
    ));
    assert!(env
        .login("saburo", &pw("saburo's long password"))
        .await
        .is_ok());
}

async fn administration(env: Env) {
    let people = &env.people;
    let (_, token) = enrolled(&env, "admin.one", "admin one's password").await;
    let token = token.expose().to_owned();
    assert!(matches!(
        people
            .add_user(NewUser {
                org: OrgId::new("city-zz").unwrap(),
                ..operator("someone")
            })
            .await,
        Err(PeopleError::UnknownOrg(_))
    ));
    assert!(matches!(
        people
            .add_user(NewUser {
                roles: Default::default(),
                ..operator("someone")
            })
            .await,
        Err(PeopleError::InvalidInput(_))
    ));
    // Grants and revocations apply to a live session at once.
    let view = people
        .grant(&uid("admin.one"), Grant::Role(Role::Administrator))
        .await
        .unwrap();
    assert!(view.roles.contains(&Role::Administrator));
    people
        .grant(&uid("admin.one"), Grant::NumberPrivilege)
        .await
        .unwrap();
    // Granting twice changes nothing.
    people
        .grant(&uid("admin.one"), Grant::Role(Role::Administrator))
        .await
        .unwrap();
    let session = people.authenticate(&token).await.unwrap();
    assert!(session.privileges.has(Role::Administrator));
    assert!(session.privileges.number_privilege);
    people
        .revoke(&uid("admin.one"), Grant::Role(Role::Operator))
        .await
        .unwrap();
    people
        .revoke(&uid("admin.one"), Grant::NumberPrivilege)
        .await
        .unwrap();
    let session = people.authenticate(&token).await.unwrap();
    assert_eq!(
        session.privileges.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::Administrator]
    );
    assert!(!session.privileges.number_privilege);
    assert!(matches!(
        people.grant(&uid("nobody"), Grant::NumberPrivilege).await,
        Err(PeopleError::UnknownUser(_))
    ));
    assert!(matches!(
        people.reset(&uid("nobody")).await,
        Err(PeopleError::UnknownUser(_))
    ));

    // The list holds no hash or secret.
    people.add_user(operator("b.user")).await.unwrap();
    let list = people.list().await.unwrap();
    assert_eq!(
        list.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>(),
        vec!["admin.one", "b.user"]
    );
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains("$argon2"));
    assert!(!json.contains("hash") && !json.contains("totp_cipher"));
    let table = crate::cli::people::table(&list);
    assert!(table.contains("admin.one") && table.contains("temporary"));
    assert!(!table.contains("$argon2"));
}

#[tokio::test]
async fn whole_login_flow_sqlite() {
    whole_login_flow(sqlite_env().await).await;
}

#[tokio::test]
async fn whole_login_flow_postgres() {
    if let Some(env) = pg_env().await {
        whole_login_flow(env).await;
    }
}

#[tokio::test]
async fn lockout_and_expiry_sqlite() {
    lockout_and_expiry(sqlite_env().await).await;
}

#[tokio::test]
async fn lockout_and_expiry_postgres() {
    if let Some(env) = pg_env().await {
        lockout_and_expiry(env).await;
    }
}

#[tokio::test]
async fn timeouts_and_disabling_sqlite() {
    timeouts_and_disabling(sqlite_env().await).await;
}

#[tokio::test]
async fn timeouts_and_disabling_postgres() {
    if let Some(env) = pg_env().await {
        timeouts_and_disabling(env).await;
    }
}

#[tokio::test]
async fn administration_sqlite() {
    administration(sqlite_env().await).await;
}

#[tokio::test]
async fn administration_postgres() {
    if let Some(env) = pg_env().await {
        administration(env).await;
    }
}

/// The user ids nobody has whose failures still count (in the database on
/// PostgreSQL, in memory on SQLite).
async fn unknown_rows(env: &Env) -> u64 {
    let policy = env.people.config().lock_policy();
    env.people
        .unknown
        .counted(&env._store.pools(), env.now(), &policy)
        .await
}

/// The ids of the stored rows of failures against unknown ids.
async fn unknown_row_ids(env: &Env) -> Vec<Vec<u8>> {
    let pools = env._store.pools();
    crate::on_pool!(&pools, read, |pool| {
        sqlx::query_scalar("SELECT id_hash FROM unknown_login_failures")
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

/// Whether any stored row of failures against unknown ids holds `text`.
async fn unknown_rows_hold(env: &Env, text: &str) -> bool {
    unknown_row_ids(env)
        .await
        .iter()
        .any(|h| h.windows(text.len()).any(|w| w == text.as_bytes()))
}

/// Someone without the password cannot tell a user id that exists (in
/// use, or disabled) from one nobody has: the same answers, the same lock
/// after the same number of tries; the unknown id is stored only as a
/// keyed hash, and its row goes once it has lapsed.
async fn unknown_ids_answer_as_users(env: Env) {
    let people = &env.people;
    let temporary = people.add_user(operator("hanako")).await.unwrap();
    people.add_user(operator("natsuko")).await.unwrap();
    people.disable(&uid("natsuko")).await.unwrap();
    let wrong = pw("not the password at all");
    let ids = ["hanako", "natsuko", "nobody.here"];
    for attempt in 1..=5 {
        let answers: Vec<PeopleError> = {
            let mut out = Vec::new();
            for id in ids {
                out.push(env.login(id, &wrong).await.unwrap_err());
            }
            out
        };
        for (id, answer) in ids.iter().zip(&answers) {
            assert_eq!(answer.code(), answers[0].code(), "{id}, attempt {attempt}");
            assert_eq!(
                answer.public_message(),
                answers[0].public_message(),
                "{id}, attempt {attempt}"
            );
        }
        let expected = if attempt < 5 {
            ErrorCode::Unauthenticated
        } else {
            ErrorCode::AccountLocked
        };
        assert_eq!(answers[0].code(), expected, "attempt {attempt}");
    }
    let until = START + Duration::from_secs(15 * 60);
    let unknown = env.login("nobody.here", &wrong).await.unwrap_err();
    assert!(matches!(unknown, PeopleError::NoSuchUserLocked { until: u } if u == until));
    assert!(unknown.is_lock());
    assert_eq!(unknown.login_actor(&uid("nobody.here")), UNKNOWN_USER_ACTOR);
    // The right password of a locked user gets the same answer as well.
    let known = env
        .login("hanako", &pw(temporary.expose()))
        .await
        .unwrap_err();
    assert!(matches!(known, PeopleError::Locked { until: u } if u == until));
    assert_eq!(known.public_message(), unknown.public_message());
    // The unknown id is stored as a keyed hash only.
    assert_eq!(unknown_rows(&env).await, 1);
    assert!(!unknown_rows_hold(&env, "nobody.here").await);
    let in_database = matches!(*env.people.unknown, unknown_ids::UnknownIds::Database);
    if in_database {
        assert_eq!(
            unknown_row_ids(&env).await,
            [env.keys.lookup_hash(UNKNOWN_ID_DOMAIN, b"nobody.here")],
            "the row is the id's hash keyed with the lookup key"
        );
    }

    // The sweep keeps the row while it still matters and deletes it once
    // the lock has passed.
    let pools = env._store.pools();
    let config = people.config().clone();
    assert_eq!(
        sweep(&pools, &config, until - Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(unknown_rows(&env).await, 1);
    env.advance(Duration::from_secs(15 * 60));
    let stored = env.people.unknown.stored(&pools).await;
    let swept = sweep(&pools, &config, env.now()).await.unwrap();
    if in_database {
        assert_eq!(
            (stored, swept),
            (1, 1),
            "the lapsed row was there, and went"
        );
        assert_eq!(env.people.unknown.stored(&pools).await, 0);
    } else {
        assert_eq!(swept, 0, "no statement for an empty table");
    }
    assert_eq!(unknown_rows(&env).await, 0);

    // After the lock both count from zero again, and a count lapses
    // 15 minutes after its last failure, for both alike.
    for id in ["hanako", "nobody.here"] {
        for _ in 0..4 {
            let err = env.login(id, &wrong).await.unwrap_err();
            assert_eq!(err.code(), ErrorCode::Unauthenticated, "{id}");
        }
    }
    env.advance(Duration::from_secs(15 * 60));
    for id in ["hanako", "nobody.here"] {
        let err = env.login(id, &wrong).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthenticated, "{id}: a new count");
    }
    // Made-up ids leave no row once their count has lapsed.
    for n in 0..20 {
        let _ = env.login(&format!("made.up.{n}"), &wrong).await;
    }
    assert_eq!(unknown_rows(&env).await, 21);
    env.advance(Duration::from_secs(15 * 60));
    let swept = sweep(&pools, &config, env.now()).await.unwrap();
    if in_database {
        assert_eq!(swept, 21);
        assert_eq!(env.people.unknown.stored(&pools).await, 0);
    }
    assert_eq!(unknown_rows(&env).await, 0);
}

#[tokio::test]
async fn unknown_ids_answer_as_users_sqlite() {
    unknown_ids_answer_as_users(sqlite_env().await).await;
}

#[tokio::test]
async fn unknown_ids_answer_as_users_postgres() {
    if let Some(env) = pg_env().await {
        unknown_ids_answer_as_users(env).await;
    }
}

#[tokio::test]
async fn concurrent_wrong_passwords_all_count() {
    let env = sqlite_env().await;
    env.people.add_user(operator("shiro")).await.unwrap();
    let attempts = (0..5).map(|_| {
        let people = env.people.clone();
        let keys = env.keys.clone();
        tokio::spawn(async move {
            people
                .login(&keys, &uid("shiro"), &pw("a wrong password!"), None)
                .await
        })
    });
    for attempt in attempts.collect::<Vec<_>>() {
        assert!(attempt.await.unwrap().is_err());
    }
    let view = env.people.user(&uid("shiro")).await.unwrap();
    assert!(view.locked_until.is_some(), "5 concurrent failures lock");
}

#[test]
fn config_refuses_disabled_protections() {
    for bad in [
        PeopleConfig {
            lockout_failures: 0,
            ..PeopleConfig::default()
        },
        PeopleConfig {
            idle_timeout_secs: 0,
            ..PeopleConfig::default()
        },
        PeopleConfig {
            hash_workers: 0,
            ..PeopleConfig::default()
        },
    ] {
        assert!(bad.validate().is_err());
    }
    let parsed: PeopleConfig = toml::from_str("idle_timeout_secs = 2").unwrap();
    assert_eq!(parsed.idle_timeout_secs, 2);
    assert_eq!(parsed.lockout_failures, 5);
    assert!(toml::from_str::<PeopleConfig>("idle = 2").is_err());
}

#[test]
fn messages_are_bilingual_and_internal_details_stay_inside() {
    let locked = PeopleError::Locked {
        until: datetime!(2026-04-01 09:15:00 UTC),
    };
    let text = locked.public_message();
    assert!(text.contains("ロック") && text.contains("locked until 2026-04-01T09:15:00Z"));
    let corrupt = PeopleError::Corrupt("stored TOTP secret".into());
    assert!(!corrupt.public_message().contains("TOTP"));
    assert_eq!(corrupt.code(), ErrorCode::Internal);
    assert_eq!(PeopleError::Busy.code(), ErrorCode::RateLimited);
    let broker: crate::error::BrokerError = PeopleError::PasswordReused.into();
    assert_eq!(broker.code(), ErrorCode::InvalidInput);
}
