//! Where failed logins as user ids nobody has are counted (by the rule of
//! [`super::lockout`], under a keyed hash of what was typed), so that such
//! an id answers as a real one.
//!
//! On a database several nodes share (PostgreSQL) the counts are rows of
//! `unknown_login_failures`, so every node agrees. Where the broker is the
//! only node (SQLite) they are kept in memory: a row written per attempt
//! would take SQLite's single writer, and its flush, from the record
//! commits: under `kakehashi-bench login-flood --rounds 2` (100 logins a
//! second as made-up ids, 2 vCPUs) the exchange's p99 was 234 ms with a
//! row per attempt and 48 ms counted in memory (15 and 12 ms without the
//! flood). A restart forgets the counts; they lapse after `lock_for`
//! anyway. A user's failure is written to `users` (the last failed login
//! is shown to them), so on SQLite its answer comes later than an unknown
//! id's by one commit: the limit of their sameness there, with four tries
//! per id in `lock_for` to measure it by.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::lockout::{self, LockPolicy, LockState};
use super::store;
use super::{PeopleError, CAS_ATTEMPTS};
use crate::store::{timestamp, Pools};

/// Most ids counted in memory at once. Counts are forgotten `lock_for`
/// after their last failure, so this bounds the distinct ids a flood can
/// try per `lock_for` (200 000 in 15 minutes is 220 hashed attempts a
/// second, several times what one node's password hashing answers); past
/// it, a new id is not counted (and a warning logged).
const MEMORY_CAP: usize = 200_000;

/// The counts, and where they live.
pub(super) enum UnknownIds {
    /// In this process (one node).
    Memory(Mutex<HashMap<Vec<u8>, LockState>>),
    /// In `unknown_login_failures` (nodes sharing the database).
    Database,
}

impl UnknownIds {
    /// In the database when `pools` is shared by several nodes, else in memory.
    pub(super) fn for_pools(pools: &Pools) -> UnknownIds {
        if pools.backend().shared().is_some() {
            UnknownIds::Database
        } else {
            UnknownIds::Memory(Mutex::new(HashMap::new()))
        }
    }

    /// Until when the id of `id_hash` is locked at `now`, if it is.
    pub(super) async fn locked(
        &self,
        pools: &Pools,
        id_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, PeopleError> {
        let state = match self {
            UnknownIds::Memory(states) => states
                .lock()
                .map_err(|_| poisoned())?
                .get(id_hash)
                .copied()
                .unwrap_or_default(),
            UnknownIds::Database => {
                row_state(store::unknown_failures(pools, id_hash).await?.as_ref())?
            }
        };
        Ok(lockout::locked_at(&state, now))
    }

    /// Counts one failure of the id of `id_hash` at `now`; answers until
    /// when it is locked, if this failure (or one meanwhile) locked it.
    pub(super) async fn fail(
        &self,
        pools: &Pools,
        id_hash: &[u8],
        now: OffsetDateTime,
        policy: &LockPolicy,
    ) -> Result<Option<OffsetDateTime>, PeopleError> {
        match self {
            UnknownIds::Memory(states) => {
                let mut states = states.lock().map_err(|_| poisoned())?;
                let before = states.get(id_hash).copied().unwrap_or_default();
                if let Some(until) = lockout::locked_at(&before, now) {
                    return Ok(Some(until));
                }
                let after = lockout::after_failure(&before, now, policy);
                // Forgotten only when room is needed: a lapsed count
                // answers as none anyway (the periodic sweep is the
                // database's).
                if states.len() >= MEMORY_CAP && !states.contains_key(id_hash) {
                    states.retain(|_, s| lockout::forget_at(s, policy).is_none_or(|t| t > now));
                }
                if states.len() >= MEMORY_CAP && !states.contains_key(id_hash) {
                    tracing::warn!(
                        cap = MEMORY_CAP,
                        "failed logins as unknown user ids are not all counted: too many ids at once"
                    );
                    return Ok(None);
                }
                states.insert(id_hash.to_vec(), after);
                Ok(after.locked_until)
            }
            UnknownIds::Database => {
                let at = timestamp(now);
                let mut row = store::unknown_failures(pools, id_hash).await?;
                for _ in 0..CAS_ATTEMPTS {
                    let before = row_state(row.as_ref())?;
                    if let Some(until) = lockout::locked_at(&before, now) {
                        return Ok(Some(until));
                    }
                    let after = lockout::after_failure(&before, now, policy);
                    // `after_failure` always sets the failure time, so this is `Some`.
                    let expires = lockout::forget_at(&after, policy).unwrap_or(now);
                    if store::record_unknown_failure(
                        pools,
                        id_hash,
                        row.as_ref(),
                        &after,
                        &at,
                        &timestamp(expires),
                    )
                    .await?
                    {
                        return Ok(after.locked_until);
                    }
                    row = store::unknown_failures(pools, id_hash).await?;
                }
                Err(PeopleError::Busy)
            }
        }
    }

    /// How many ids are counted at `now` (not yet forgettable).
    #[cfg(test)]
    pub(super) async fn counted(
        &self,
        pools: &Pools,
        now: OffsetDateTime,
        policy: &LockPolicy,
    ) -> u64 {
        match self {
            UnknownIds::Memory(states) => states.lock().map_or(0, |s| {
                s.values()
                    .filter(|s| lockout::forget_at(s, policy).is_none_or(|t| t > now))
                    .count() as u64
            }),
            UnknownIds::Database => crate::on_pool!(pools, read, |pool| {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM unknown_login_failures WHERE expires_at > $1",
                )
                .bind(timestamp(now))
                .fetch_one(pool)
                .await
                .map_or(0, |n| u64::try_from(n).unwrap_or(0))
            }),
        }
    }
}

fn poisoned() -> PeopleError {
    PeopleError::Corrupt("the counts of unknown user ids are unusable (a panic held them)".into())
}

/// The lock state a stored row holds (none: no failure).
fn row_state(row: Option<&store::UnknownRow>) -> Result<LockState, PeopleError> {
    let Some(row) = row else {
        return Ok(LockState::default());
    };
    Ok(LockState {
        failures: u32::try_from(row.failed_count).unwrap_or(u32::MAX),
        locked_until: row
            .locked_until
            .as_deref()
            .map(super::parse_time)
            .transpose()?,
        last_failure: Some(super::parse_time(&row.last_failed_at)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use time::macros::datetime;

    fn memory() -> (UnknownIds, Pools) {
        // The memory variant never touches the pools; a lazy pool is never opened.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .expect("lazy pool");
        (
            UnknownIds::Memory(Mutex::new(HashMap::new())),
            Pools::Sqlite {
                write: pool.clone(),
                read: pool,
            },
        )
    }

    #[tokio::test]
    async fn in_memory_an_id_locks_after_the_limit_and_is_forgotten_after() {
        let (ids, pools) = memory();
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        for _ in 0..4 {
            assert_eq!(ids.fail(&pools, b"h", t0, &policy).await.unwrap(), None);
        }
        let until = t0 + Duration::from_secs(15 * 60);
        assert_eq!(
            ids.fail(&pools, b"h", t0, &policy).await.unwrap(),
            Some(until)
        );
        assert_eq!(ids.locked(&pools, b"h", t0).await.unwrap(), Some(until));
        assert_eq!(ids.locked(&pools, b"other", t0).await.unwrap(), None);
        assert_eq!(ids.counted(&pools, t0, &policy).await, 1);
        assert_eq!(
            ids.counted(&pools, until - Duration::from_secs(1), &policy)
                .await,
            1
        );
        assert_eq!(ids.counted(&pools, until, &policy).await, 0);
        assert_eq!(ids.locked(&pools, b"h", until).await.unwrap(), None);
        // After the lock a new count starts.
        let later = until + Duration::from_secs(1);
        assert_eq!(ids.fail(&pools, b"h", later, &policy).await.unwrap(), None);
    }
}
