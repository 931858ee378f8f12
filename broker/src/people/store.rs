//! The SQL of people: one statement text for SQLite and PostgreSQL
//! (`$N` placeholders, RFC 3339 text timestamps, BOOLEAN columns), run
//! through [`crate::on_pool!`]. Decisions live in the sibling modules; this
//! file only reads and writes rows.

use std::collections::BTreeSet;

use kakehashi_interfaces::people::Role;

use super::lockout::LockState;
use super::password::HISTORY_DEPTH;
use super::session::Stage;
use super::PeopleError;
use crate::store::Pools;

/// One `users` row. Holds the password hash and TOTP cipher: never leaves
/// this module's parent.
#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: String,
    pub org_id: String,
    pub number_privilege: bool,
    pub disabled: bool,
    pub password_hash: String,
    pub password_temporary: bool,
    pub totp_cipher: Option<Vec<u8>>,
    /// The session (token hash, hex) that began the enrolment in progress.
    pub totp_enrolment_session: Option<String>,
    pub totp_enrolled: bool,
    pub totp_last_step: Option<i64>,
    pub failed_count: i64,
    pub locked_until: Option<String>,
    pub last_login_at: Option<String>,
    pub last_login_from: Option<String>,
    pub last_failed_at: Option<String>,
    pub last_failed_from: Option<String>,
    pub revision: i64,
    pub created_at: String,
}

const USER_COLUMNS: &str = "id, org_id, number_privilege, disabled, password_hash, \
    password_temporary, totp_cipher, totp_enrolment_session, totp_enrolled, totp_last_step, failed_count, locked_until, \
    last_login_at, last_login_from, last_failed_at, last_failed_from, revision, created_at";

/// One `user_sessions` row.
#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    pub user_id: String,
    pub stage: String,
    pub csrf_token: String,
    pub source: Option<String>,
    pub created_at: String,
    pub last_seen_at: String,
    pub prev_login_at: Option<String>,
    pub prev_login_from: Option<String>,
    pub prev_failed_at: Option<String>,
    pub prev_failed_from: Option<String>,
}

const SESSION_COLUMNS: &str = "user_id, stage, csrf_token, source, created_at, last_seen_at, \
    prev_login_at, prev_login_from, prev_failed_at, prev_failed_from";

/// What adding a user did.
pub(super) enum Insert {
    Done,
    Exists,
    UnknownOrg,
}

pub(super) async fn user(pools: &Pools, id: &str) -> Result<Option<UserRow>, PeopleError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await?
    }))
}

pub(super) async fn all_users(pools: &Pools) -> Result<Vec<UserRow>, PeopleError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY id");
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_as::<_, UserRow>(&sql).fetch_all(pool).await?
    }))
}

fn parse_role(text: &str) -> Result<Role, PeopleError> {
    text.parse()
        .map_err(|_| PeopleError::Corrupt(format!("unknown role {text:?}")))
}

pub(super) async fn roles(pools: &Pools, id: &str) -> Result<BTreeSet<Role>, PeopleError> {
    let rows: Vec<(String,)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT role FROM user_roles WHERE user_id = $1")
            .bind(id)
            .fetch_all(pool)
            .await?
    });
    rows.iter().map(|(r,)| parse_role(r)).collect()
}

/// Every user's roles, by user id.
pub(super) async fn all_roles(
    pools: &Pools,
) -> Result<std::collections::HashMap<String, BTreeSet<Role>>, PeopleError> {
    let rows: Vec<(String, String)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT user_id, role FROM user_roles")
            .fetch_all(pool)
            .await?
    });
    let mut map: std::collections::HashMap<String, BTreeSet<Role>> = Default::default();
    for (user, role) in rows {
        map.entry(user).or_default().insert(parse_role(&role)?);
    }
    Ok(map)
}

/// Inserts a user with a temporary password, its roles and the first
/// history entry, in one transaction; nothing when the id is taken or the
/// org unknown.
pub(super) async fn insert_user(
    pools: &Pools,
    id: &str,
    org: &str,
    roles: &BTreeSet<Role>,
    number_privilege: bool,
    phc: &str,
    now: &str,
) -> Result<Insert, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let org_row: Option<(String,)> = sqlx::query_as("SELECT id FROM orgs WHERE id = $1")
            .bind(org)
            .fetch_optional(&mut *tx)
            .await?;
        if org_row.is_none() {
            Insert::UnknownOrg
        } else {
            let inserted = sqlx::query(
                "INSERT INTO users (id, org_id, number_privilege, disabled, password_hash,
                     password_temporary, password_set_at, totp_enrolled, failed_count, revision,
                     created_at, updated_at)
                 VALUES ($1, $2, $3, FALSE, $4, TRUE, $5, FALSE, 0, 0, $5, $5)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(org)
            .bind(number_privilege)
            .bind(phc)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                Insert::Exists
            } else {
                for role in roles {
                    sqlx::query(
                        "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3)",
                    )
                    .bind(id)
                    .bind(role.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO password_history (user_id, seq, password_hash, set_at)
                     VALUES ($1, 1, $2, $3)",
                )
                .bind(id)
                .bind(phc)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Insert::Done
            }
        }
    }))
}

/// Stores one more failure (compare-and-set on `revision`); `false` when
/// the row changed since it was read.
pub(super) async fn record_failure(
    pools: &Pools,
    user: &UserRow,
    state: &LockState,
    at: &str,
    from: Option<&str>,
) -> Result<bool, PeopleError> {
    let locked_until = state.locked_until.map(crate::store::timestamp);
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE users SET failed_count = $1, locked_until = $2, last_failed_at = $3,
                 last_failed_from = $4, revision = revision + 1, updated_at = $3
             WHERE id = $5 AND revision = $6",
        )
        .bind(i64::from(state.failures))
        .bind(locked_until)
        .bind(at)
        .bind(from)
        .bind(&user.id)
        .bind(user.revision)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// Stores an accepted TOTP code: the step, enrolment, the reset failure
/// count and the successful login (compare-and-set on `revision`).
pub(super) async fn record_full_login(
    pools: &Pools,
    user: &UserRow,
    step: i64,
    at: &str,
    from: Option<&str>,
) -> Result<bool, PeopleError> {
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE users SET totp_enrolled = TRUE, totp_enrolment_session = NULL,
                 totp_last_step = $1, failed_count = 0,
                 locked_until = NULL, last_login_at = $2, last_login_from = $3,
                 revision = revision + 1, updated_at = $2
             WHERE id = $4 AND revision = $5",
        )
        .bind(step)
        .bind(at)
        .bind(from)
        .bind(&user.id)
        .bind(user.revision)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// Stores a TOTP secret being enrolled by the session `session` (token
/// hash, hex), only while none is enrolled.
pub(super) async fn store_enrolment(
    pools: &Pools,
    id: &str,
    cipher: &[u8],
    session: &str,
    now: &str,
) -> Result<bool, PeopleError> {
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE users SET totp_cipher = $1, totp_enrolment_session = $2,
                 totp_last_step = NULL, revision = revision + 1, updated_at = $3
             WHERE id = $4 AND totp_enrolled = FALSE",
        )
        .bind(cipher)
        .bind(session)
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// The newest password hashes (the current one first), at most [`HISTORY_DEPTH`].
pub(super) async fn recent_hashes(pools: &Pools, id: &str) -> Result<Vec<String>, PeopleError> {
    let rows: Vec<(String,)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT password_hash FROM password_history WHERE user_id = $1
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(HISTORY_DEPTH as i64)
        .fetch_all(pool)
        .await?
    });
    Ok(rows.into_iter().map(|(h,)| h).collect())
}

/// Statements shared by a password change and a reset: the history gains
/// the new hash and keeps only the newest [`HISTORY_DEPTH`].
macro_rules! push_history {
    ($tx:expr, $id:expr, $phc:expr, $now:expr) => {{
        sqlx::query(
            "INSERT INTO password_history (user_id, seq, password_hash, set_at)
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM password_history WHERE user_id = $1",
        )
        .bind($id)
        .bind($phc)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        sqlx::query(
            "DELETE FROM password_history WHERE user_id = $1
             AND seq <= (SELECT MAX(seq) FROM password_history WHERE user_id = $1) - $2",
        )
        .bind($id)
        .bind(HISTORY_DEPTH as i64)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Replaces the password chosen by the user, if it is still `old_phc`;
/// moves the session on to `stage` and ends the user's other sessions.
pub(super) async fn change_password(
    pools: &Pools,
    id: &str,
    old_phc: &str,
    new_phc: &str,
    now: &str,
    session: &[u8],
    stage: Stage,
) -> Result<bool, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, password_temporary = FALSE, password_set_at = $2,
                 revision = revision + 1, updated_at = $2
             WHERE id = $3 AND password_hash = $4",
        )
        .bind(new_phc)
        .bind(now)
        .bind(id)
        .bind(old_phc)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            push_history!(tx, id, new_phc, now);
            sqlx::query(
                "UPDATE user_sessions SET stage = $1, last_seen_at = $2 WHERE token_hash = $3",
            )
            .bind(stage.as_str())
            .bind(now)
            .bind(session)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM user_sessions WHERE user_id = $1 AND token_hash <> $2")
                .bind(id)
                .bind(session)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            true
        } else {
            false
        }
    }))
}

/// Gives a user a new temporary password and clears TOTP, failures and
/// lock; ends every session. `false` when there is no such user.
pub(super) async fn reset(
    pools: &Pools,
    id: &str,
    new_phc: &str,
    now: &str,
) -> Result<bool, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, password_temporary = TRUE, password_set_at = $2,
                 totp_cipher = NULL, totp_enrolment_session = NULL, totp_enrolled = FALSE,
                 totp_last_step = NULL, failed_count = 0, locked_until = NULL,
                 revision = revision + 1, updated_at = $2
             WHERE id = $3",
        )
        .bind(new_phc)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            push_history!(tx, id, new_phc, now);
            sqlx::query("DELETE FROM user_sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            true
        } else {
            false
        }
    }))
}

/// Disables or enables a user; disabling ends every session at once.
/// `false` when there is no such user.
pub(super) async fn set_disabled(
    pools: &Pools,
    id: &str,
    disabled: bool,
    now: &str,
) -> Result<bool, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE users SET disabled = $1, revision = revision + 1, updated_at = $2 WHERE id = $3",
        )
        .bind(disabled)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            if disabled {
                sqlx::query("DELETE FROM user_sessions WHERE user_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        changed == 1
    }))
}

/// Adds or removes a role (idempotent). `false` when there is no such user.
pub(super) async fn set_role(
    pools: &Pools,
    id: &str,
    role: Role,
    on: bool,
    now: &str,
) -> Result<bool, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let exists = sqlx::query("UPDATE users SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if exists == 1 {
            if on {
                sqlx::query(
                    "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, role) DO NOTHING",
                )
                .bind(id)
                .bind(role.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2")
                    .bind(id)
                    .bind(role.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        exists == 1
    }))
}

/// Sets the Individual-Number privilege. `false` when there is no such user.
pub(super) async fn set_number_privilege(
    pools: &Pools,
    id: &str,
    on: bool,
    now: &str,
) -> Result<bool, PeopleError> {
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query("UPDATE users SET number_privilege = $1, updated_at = $2 WHERE id = $3")
            .bind(on)
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(done == 1)
}

/// A new session, snapshotting the user's last logins; the user's sessions
/// that have timed out go at the same time.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_session(
    pools: &Pools,
    hash: &[u8],
    user: &UserRow,
    stage: Stage,
    csrf: &str,
    source: Option<&str>,
    now: &str,
    idle_cutoff: &str,
    lifetime_cutoff: &str,
) -> Result<(), PeopleError> {
    crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "DELETE FROM user_sessions WHERE user_id = $1
             AND (last_seen_at <= $2 OR created_at <= $3)",
        )
        .bind(&user.id)
        .bind(idle_cutoff)
        .bind(lifetime_cutoff)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO user_sessions (token_hash, user_id, stage, csrf_token, source, created_at,
                 last_seen_at, prev_login_at, prev_login_from, prev_failed_at, prev_failed_from)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10)",
        )
        .bind(hash)
        .bind(&user.id)
        .bind(stage.as_str())
        .bind(csrf)
        .bind(source)
        .bind(now)
        .bind(&user.last_login_at)
        .bind(&user.last_login_from)
        .bind(&user.last_failed_at)
        .bind(&user.last_failed_from)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(())
}

pub(super) async fn session(pools: &Pools, hash: &[u8]) -> Result<Option<SessionRow>, PeopleError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE token_hash = $1");
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_as::<_, SessionRow>(&sql)
            .bind(hash)
            .fetch_optional(pool)
            .await?
    }))
}

pub(super) async fn touch_session(
    pools: &Pools,
    hash: &[u8],
    now: &str,
) -> Result<(), PeopleError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query("UPDATE user_sessions SET last_seen_at = $1 WHERE token_hash = $2")
            .bind(now)
            .bind(hash)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Moves a session from stage `from` to `to` under a new id (`new_hash`);
/// `false` when it was no longer at `from`.
pub(super) async fn advance_session(
    pools: &Pools,
    hash: &[u8],
    new_hash: &[u8],
    from: Stage,
    to: Stage,
    now: &str,
) -> Result<bool, PeopleError> {
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE user_sessions SET stage = $1, last_seen_at = $2, token_hash = $5
             WHERE token_hash = $3 AND stage = $4",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(hash)
        .bind(from.as_str())
        .bind(new_hash)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

pub(super) async fn delete_session(pools: &Pools, hash: &[u8]) -> Result<(), PeopleError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query("DELETE FROM user_sessions WHERE token_hash = $1")
            .bind(hash)
            .execute(pool)
            .await?;
    });
    Ok(())
}

pub(super) async fn delete_user_sessions(pools: &Pools, id: &str) -> Result<(), PeopleError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query("DELETE FROM user_sessions WHERE user_id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Deletes every session unused since `idle_cutoff` or begun before
/// `lifetime_cutoff`; returns how many.
pub(super) async fn purge_sessions(
    pools: &Pools,
    idle_cutoff: &str,
    lifetime_cutoff: &str,
) -> Result<u64, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        sqlx::query("DELETE FROM user_sessions WHERE last_seen_at <= $1 OR created_at <= $2")
            .bind(idle_cutoff)
            .bind(lifetime_cutoff)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

/// One `unknown_login_failures` row: the failures counted against a user
/// id nobody has, found by the keyed hash of that id.
#[derive(sqlx::FromRow)]
pub(super) struct UnknownRow {
    pub failed_count: i64,
    pub locked_until: Option<String>,
    pub last_failed_at: String,
    pub revision: i64,
}

pub(super) async fn unknown_failures(
    pools: &Pools,
    id_hash: &[u8],
) -> Result<Option<UnknownRow>, PeopleError> {
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_as::<_, UnknownRow>(
            "SELECT failed_count, locked_until, last_failed_at, revision
             FROM unknown_login_failures WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(pool)
        .await?
    }))
}

/// Stores one more failure against an unknown id: a new row when `read`
/// found none, else an update compare-and-set on its `revision`. `false`
/// when another attempt wrote the row since it was read.
pub(super) async fn record_unknown_failure(
    pools: &Pools,
    id_hash: &[u8],
    read: Option<&UnknownRow>,
    state: &LockState,
    at: &str,
    expires_at: &str,
) -> Result<bool, PeopleError> {
    let locked_until = state.locked_until.map(crate::store::timestamp);
    let failures = i64::from(state.failures);
    let done = match read {
        None => crate::on_pool!(pools, write, |pool| {
            sqlx::query(
                "INSERT INTO unknown_login_failures
                     (id_hash, failed_count, locked_until, last_failed_at, expires_at, revision)
                 VALUES ($1, $2, $3, $4, $5, 0)
                 ON CONFLICT (id_hash) DO NOTHING",
            )
            .bind(id_hash)
            .bind(failures)
            .bind(&locked_until)
            .bind(at)
            .bind(expires_at)
            .execute(pool)
            .await?
            .rows_affected()
        }),
        Some(row) => crate::on_pool!(pools, write, |pool| {
            sqlx::query(
                "UPDATE unknown_login_failures SET failed_count = $1, locked_until = $2,
                     last_failed_at = $3, expires_at = $4, revision = revision + 1
                 WHERE id_hash = $5 AND revision = $6",
            )
            .bind(failures)
            .bind(&locked_until)
            .bind(at)
            .bind(expires_at)
            .bind(id_hash)
            .bind(row.revision)
            .execute(pool)
            .await?
            .rows_affected()
        }),
    };
    Ok(done == 1)
}

/// Deletes the unknown-id failures that answer as none at `now` (their
/// count lapsed and lock passed); returns how many.
pub(super) async fn purge_unknown_failures(pools: &Pools, now: &str) -> Result<u64, PeopleError> {
    Ok(crate::on_pool!(pools, write, |pool| {
        sqlx::query("DELETE FROM unknown_login_failures WHERE expires_at <= $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}
