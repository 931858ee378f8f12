//! The key ids a database has seen (`key_ids`, migration 0112): which key
//! files every node must hold. Only ids are stored — hashes of keys (or of
//! public keys) — never a key.

use std::fmt;

use crate::error::BrokerError;
use crate::store::{now_rfc3339, Pools};

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `lookup.key`: keyed hashes of Individual Numbers; never rotated.
    Lookup,
    /// Permit signing keys.
    Permit,
    /// Key-encryption keys (wrap the data keys).
    Kek,
    /// The checkpoint key of the provision records and the operation log.
    Sealer,
}

impl Role {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Lookup => "lookup",
            Role::Permit => "permit",
            Role::Kek => "kek",
            Role::Sealer => "sealer",
        }
    }

    /// Every role, in the order `keys status` shows them.
    pub const ALL: [Role; 4] = [Role::Lookup, Role::Permit, Role::Kek, Role::Sealer];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A recorded key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// What it is for.
    pub role: String,
    /// Its id.
    pub key_id: String,
    /// `active`, `previous` or `retired`.
    pub state: String,
    /// When first recorded.
    pub recorded_at: String,
    /// A permit key signs from then on.
    pub active_from: Option<String>,
    /// A previous permit key is published until then.
    pub retire_after: Option<String>,
}

impl KeyRow {
    /// Whether the row is for `role`.
    pub fn is(&self, role: Role) -> bool {
        self.role == role.as_str()
    }

    /// Not retired.
    pub fn in_use(&self) -> bool {
        self.state != "retired"
    }
}

type RawRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// Every recorded key id.
pub async fn rows(pools: &Pools) -> Result<Vec<KeyRow>, BrokerError> {
    let raw: Vec<RawRow> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT role, key_id, state, recorded_at, active_from, retire_after FROM key_ids \
             ORDER BY role, recorded_at, key_id",
        )
        .fetch_all(pool)
        .await?
    });
    Ok(raw
        .into_iter()
        .map(
            |(role, key_id, state, recorded_at, active_from, retire_after)| KeyRow {
                role,
                key_id,
                state,
                recorded_at,
                active_from,
                retire_after,
            },
        )
        .collect())
}

/// The active id of `role` in `rows`.
pub fn active(rows: &[KeyRow], role: Role) -> Option<&KeyRow> {
    rows.iter().find(|r| r.is(role) && r.state == "active")
}

/// Records `key_id` as the active key of `role` unless one is recorded
/// already (the first node to start records its files; a concurrent
/// first start of another node with other files loses the race and is
/// refused by the check that follows).
pub async fn record_first(pools: &Pools, role: Role, key_id: &str) -> Result<(), BrokerError> {
    let now = now_rfc3339();
    crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "INSERT INTO key_ids (role, key_id, state, recorded_at, active_from) \
             VALUES ($1, $2, 'active', $3, $3) ON CONFLICT DO NOTHING",
        )
        .bind(role.as_str())
        .bind(key_id)
        .bind(&now)
        .execute(pool)
        .await
        .map(|_| ())?
    });
    Ok(())
}

/// A rotation: the active key of `role` becomes previous (published or
/// accepted until `old_until`, when given), any earlier previous key of
/// `role` is retired unless it is still within its own period, and
/// `new_id` becomes active from `active_from`. One transaction.
pub async fn rotate(
    pools: &Pools,
    role: Role,
    new_id: &str,
    active_from: &str,
    old_until: Option<&str>,
) -> Result<(), BrokerError> {
    let now = now_rfc3339();
    crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        // Permit keys retire by their own date; other roles keep one
        // previous key, the one a node not yet restarted still uses.
        if role != Role::Permit {
            sqlx::query(
                "UPDATE key_ids SET state = 'retired' WHERE role = $1 AND state = 'previous'",
            )
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE key_ids SET state = 'previous', retire_after = $2 \
             WHERE role = $1 AND state = 'active'",
        )
        .bind(role.as_str())
        .bind(old_until)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO key_ids (role, key_id, state, recorded_at, active_from) \
             VALUES ($1, $2, 'active', $3, $4)",
        )
        .bind(role.as_str())
        .bind(new_id)
        .bind(&now)
        .bind(active_from)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?
    });
    Ok(())
}

/// Marks a key retired.
pub async fn retire(pools: &Pools, role: Role, key_id: &str) -> Result<(), BrokerError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query("UPDATE key_ids SET state = 'retired' WHERE role = $1 AND key_id = $2")
            .bind(role.as_str())
            .bind(key_id)
            .execute(pool)
            .await
            .map(|_| ())?
    });
    Ok(())
}

/// What a node's key directory holds, as ids.
#[derive(Debug, Clone)]
pub struct DirIds {
    /// `lookup.key`.
    pub lookup: String,
    /// Every permit key file's id.
    pub permits: Vec<String>,
    /// Every kek file's id.
    pub keks: Vec<String>,
    /// The id of the newest kek file (used when the database names none).
    pub newest_kek: String,
    /// `records-sealer.pem`.
    pub sealer: String,
    /// Every checkpoint key the directory trusts (`records-sealer*.pem/.pub`).
    pub sealer_trusted: Vec<String>,
}

const COPY: &str = "copy the key directory from a running node (docs/keys.md)";

/// Checks a key directory against the recorded ids: the first reason a
/// node with this directory must not serve this database, naming the file.
pub fn mismatch(rows: &[KeyRow], dir: &DirIds) -> Option<String> {
    if let Some(r) = active(rows, Role::Lookup) {
        if r.key_id != dir.lookup {
            return Some(format!(
                "key directory: lookup.key differs from the key the database was first used with \
                 (id {}, this file has id {}); {COPY}",
                r.key_id, dir.lookup
            ));
        }
    }
    if let Some(r) = active(rows, Role::Permit) {
        if !dir.permits.contains(&r.key_id) {
            return Some(format!(
                "key directory: no permit-*.pem file holds the permit signing key {} that the \
                 database records as active; {COPY}",
                r.key_id
            ));
        }
    }
    if let Some(r) = active(rows, Role::Kek) {
        if !dir.keks.contains(&r.key_id) {
            return Some(format!(
                "key directory: no kek-*.key file holds the key-encryption key {} that the \
                 database's data keys are wrapped with; {COPY}",
                r.key_id
            ));
        }
    }
    if let Some(r) = active(rows, Role::Sealer) {
        let accepted = rows
            .iter()
            .any(|row| row.is(Role::Sealer) && row.in_use() && row.key_id == dir.sealer);
        if !accepted {
            return Some(format!(
                "key directory: records-sealer.pem differs from the checkpoint key the database \
                 records (id {}, this file has id {}); {COPY}",
                r.key_id, dir.sealer
            ));
        }
        if !dir.sealer_trusted.contains(&r.key_id) {
            return Some(format!(
                "key directory: records-sealer.pem is the older checkpoint key {}, and the \
                 directory lacks the rotated-in key {} (records-sealer.pem or \
                 records-sealer-{}.pub); {COPY}",
                dir.sealer, r.key_id, r.key_id
            ));
        }
    }
    None
}

/// Records the directory's keys for roles the database has none for (the
/// first start), then checks the directory against what is recorded.
pub async fn check_and_record(pools: &Pools, dir: &DirIds) -> Result<(), BrokerError> {
    let before = rows(pools).await?;
    for (role, id) in [
        (Role::Lookup, &dir.lookup),
        (Role::Kek, &dir.newest_kek),
        (Role::Sealer, &dir.sealer),
    ] {
        if !before.iter().any(|r| r.is(role)) {
            record_first(pools, role, id).await?;
        }
    }
    if !before.iter().any(|r| r.is(Role::Permit)) {
        if let Some(id) = dir.permits.first() {
            record_first(pools, Role::Permit, id).await?;
        }
    }
    let after = rows(pools).await?;
    match mismatch(&after, dir) {
        Some(message) => Err(BrokerError::Config(message)),
        None => Ok(()),
    }
}
