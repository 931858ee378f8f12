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

/// How seldom a full map is searched for lapsed counts: a flood past the
/// cap makes one search a second, not one per attempt.
const MEMORY_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The counts, and where they live.
pub(super) enum UnknownIds {
    /// In this process (one node).
    Memory(Mutex<Counts>),
    /// In `unknown_login_failures` (nodes sharing the database).
    Database,
}

/// The counts kept in memory.
#[derive(Default)]
pub(super) struct Counts {
    states: HashMap<Vec<u8>, LockState>,
    last_pruned: Option<std::time::Instant>,
}

/// An id's count as read before its password hash: where the failure after
/// it starts (on the database, the row a compare-and-set expects).
pub(super) struct Seen {
    state: LockState,
    row: Option<store::UnknownRow>,
}

impl Seen {
    /// Until when the id is locked at `now`, if it is.
    pub(super) fn locked_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        lockout::locked_at(&self.state, now)
    }
}

/// Whether the counts are rows of the database (several nodes share it).
pub(super) fn in_database(pools: &Pools) -> bool {
    pools.backend().shared().is_some()
}

impl UnknownIds {
    /// In the database when `pools` is shared by several nodes, else in memory.
    pub(super) fn for_pools(pools: &Pools) -> UnknownIds {
        if in_database(pools) {
            UnknownIds::Database
        } else {
            UnknownIds::Memory(Mutex::default())
        }
    }

    /// The count of the id of `id_hash`.
    pub(super) async fn read(&self, pools: &Pools, id_hash: &[u8]) -> Result<Seen, PeopleError> {
        Ok(match self {
            UnknownIds::Memory(counts) => Seen {
                state: counts
                    .lock()
                    .map_err(|_| poisoned())?
                    .states
                    .get(id_hash)
                    .copied()
                    .unwrap_or_default(),
                row: None,
            },
            UnknownIds::Database => {
                let row = store::unknown_failures(pools, id_hash).await?;
                Seen {
                    state: row_state(row.as_ref())?,
                    row,
                }
            }
        })
    }

    /// Counts one failure of the id of `id_hash` at `now`, from `seen` (read
    /// before the hash); answers until when it is locked, if this failure
    /// (or one meanwhile) locked it.
    pub(super) async fn fail(
        &self,
        pools: &Pools,
        id_hash: &[u8],
        seen: Seen,
        now: OffsetDateTime,
        policy: &LockPolicy,
    ) -> Result<Option<OffsetDateTime>, PeopleError> {
        match self {
            UnknownIds::Memory(counts) => {
                // Read again under the lock: failures meanwhile count too.
                let mut counts = counts.lock().map_err(|_| poisoned())?;
                let before = counts.states.get(id_hash).copied().unwrap_or_default();
                let after = lockout::after_failure(&before, now, policy);
                if !counts.states.contains_key(id_hash) && !counts.make_room(now, policy) {
                    tracing::warn!(
                        cap = MEMORY_CAP,
                        "failed logins as unknown user ids are not all counted: too many ids at once"
                    );
                    return Ok(None);
                }
                counts.states.insert(id_hash.to_vec(), after);
                Ok(after.locked_until)
            }
            UnknownIds::Database => {
                let at = timestamp(now);
                let mut row = seen.row;
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

    /// How many ids have a count stored (in memory: held, lapsed or not;
    /// in the database: rows not yet swept).
    #[cfg(test)]
    pub(super) async fn stored(&self, pools: &Pools) -> u64 {
        match self {
            UnknownIds::Memory(counts) => counts.lock().map_or(0, |c| c.states.len() as u64),
            UnknownIds::Database => crate::on_pool!(pools, read, |pool| {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM unknown_login_failures")
                    .fetch_one(pool)
                    .await
                    .map_or(0, |n| u64::try_from(n).unwrap_or(0))
            }),
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
            UnknownIds::Memory(counts) => counts.lock().map_or(0, |c| {
                c.states
                    .values()
                    .filter(|s| still_counts(s, now, policy))
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

impl Counts {
    /// Whether a new id fits: when the map is full, its lapsed counts are
    /// forgotten first (a lapsed count answers as none anyway; the
    /// database's are swept by the sweeper role instead), at most once per
    /// [`MEMORY_PRUNE_EVERY`].
    fn make_room(&mut self, now: OffsetDateTime, policy: &LockPolicy) -> bool {
        if self.states.len() < MEMORY_CAP {
            return true;
        }
        let due = self
            .last_pruned
            .is_none_or(|at| at.elapsed() >= MEMORY_PRUNE_EVERY);
        if due {
            self.states.retain(|_, s| still_counts(s, now, policy));
            self.last_pruned = Some(std::time::Instant::now());
        }
        self.states.len() < MEMORY_CAP
    }
}

/// Whether a count still answers at `now` (not yet forgettable).
fn still_counts(state: &LockState, now: OffsetDateTime, policy: &LockPolicy) -> bool {
    lockout::forget_at(state, policy).is_none_or(|t| t > now)
}

fn poisoned() -> PeopleError {
    PeopleError::Corrupt("the counts of unknown user ids are unusable (a panic held them)".into())
}

/// The lock state a stored row holds (none: no failure).
fn row_state(row: Option<&store::UnknownRow>) -> Result<LockState, PeopleError> {
    match row {
        None => Ok(LockState::default()),
        Some(row) => super::stored_lock_state(
            row.failed_count,
            row.locked_until.as_deref(),
            Some(&row.last_failed_at),
        ),
    }
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
            UnknownIds::Memory(Mutex::default()),
            Pools::Sqlite {
                write: pool.clone(),
                read: pool,
            },
        )
    }

    /// One failure, read first as the login does.
    async fn fail(
        ids: &UnknownIds,
        pools: &Pools,
        id: &[u8],
        at: OffsetDateTime,
        policy: &LockPolicy,
    ) -> Option<OffsetDateTime> {
        let seen = ids.read(pools, id).await.unwrap();
        ids.fail(pools, id, seen, at, policy).await.unwrap()
    }

    #[tokio::test]
    async fn in_memory_an_id_locks_after_the_limit_and_is_forgotten_after() {
        let (ids, pools) = memory();
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        for _ in 0..4 {
            assert_eq!(fail(&ids, &pools, b"h", t0, &policy).await, None);
        }
        let until = t0 + Duration::from_secs(15 * 60);
        assert_eq!(fail(&ids, &pools, b"h", t0, &policy).await, Some(until));
        let locked = |id: &'static [u8], at| {
            let (ids, pools) = (&ids, &pools);
            async move { ids.read(pools, id).await.unwrap().locked_at(at) }
        };
        assert_eq!(locked(b"h", t0).await, Some(until));
        assert_eq!(locked(b"other", t0).await, None);
        assert_eq!(ids.counted(&pools, t0, &policy).await, 1);
        assert_eq!(
            ids.counted(&pools, until - Duration::from_secs(1), &policy)
                .await,
            1
        );
        assert_eq!(ids.counted(&pools, until, &policy).await, 0);
        assert_eq!(locked(b"h", until).await, None);
        // After the lock a new count starts.
        let later = until + Duration::from_secs(1);
        assert_eq!(fail(&ids, &pools, b"h", later, &policy).await, None);
    }

    /// A full map forgets its lapsed counts to make room, and refuses a new
    /// id only while every count still answers.
    #[test]
    fn a_full_map_makes_room_from_lapsed_counts_only() {
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        let mut counts = Counts::default();
        let failed = lockout::after_failure(&LockState::default(), t0, &policy);
        for n in 0..MEMORY_CAP {
            counts.states.insert(n.to_be_bytes().to_vec(), failed);
        }
        assert!(!counts.make_room(t0, &policy), "every count still answers");
        assert_eq!(counts.states.len(), MEMORY_CAP);
        // Searched once a second at most: a second later, with every count
        // lapsed, the map is emptied.
        let lapsed = t0 + Duration::from_secs(15 * 60);
        counts.last_pruned = Some(std::time::Instant::now() - MEMORY_PRUNE_EVERY);
        assert!(counts.make_room(lapsed, &policy));
        assert!(counts.states.is_empty());
    }
}
