//! How PostgreSQL commits provision records, into month partitions made
//! ahead of use (a purge drops whole months):
//!
//! - the common commit is one statement (one round trip instead of four:
//!   begin, lock, insert, commit);
//! - the locked path is three round trips: `BEGIN` with the head lock and
//!   the lookup generation read under it, the inserts, `COMMIT`. It is the
//!   path of every commit while other nodes move the head, so each of its
//!   round trips is paid on every commit there, by the database and by the
//!   writer (benches/README, cluster runs 13–18). While other nodes write,
//!   the first round trip goes out before the writer gathers its batch
//!   ([`Committer::lock_ahead`]); the inserts then check the lookup
//!   generation again, since rows queued after it was read were answered
//!   after it.
//!
//! Both run on one connection the writer keeps: a pooled connection is
//! pinged on its way back to the pool, which would be one more round trip
//! per commit.

use std::collections::BTreeSet;

use async_trait::async_trait;
use kakehashi_interfaces::audit::Hash;
use sqlx::{Executor, PgConnection, PgPool, Row};

use crate::error::BrokerError;
use crate::store::records::rows::{NewRow, Prepared, PreparedRow, PurgePlan};
use crate::store::records::{
    append_locked, chunk_statement, AtFailure, Chain, Committer, INSERT_HEAD_PG,
};

/// Opens the locked path's transaction in one round trip: the head row's
/// lock (every writer on every node takes it first), then, in a snapshot
/// taken once the lock is held, the lookup generation.
const BEGIN_LOCKED: &str = "BEGIN; \
     UPDATE records_head SET seq = seq WHERE id = 1 RETURNING seq, hash, cut_seq; \
     SELECT n FROM lookup_generation WHERE id = 1";

/// What the head lock read: the head's sequence and hash, the purge cut,
/// the lookup generation.
type Locked = (i64, Vec<u8>, i64, i64);

/// The records writer's committer on PostgreSQL.
pub(crate) struct PgCommitter {
    pool: PgPool,
    /// The writer's connection, taken out of `pool` and kept; dropped after
    /// any error (which ends a transaction left open), and the next commit
    /// takes a new one.
    conn: Option<PgConnection>,
    /// The head lock taken ahead of the batch, in a transaction open on
    /// `conn` ([`Committer::lock_ahead`]).
    ahead: Option<Locked>,
    /// Months whose partitions exist (created on first use).
    ensured_months: BTreeSet<i32>,
}

impl PgCommitter {
    /// A committer on `pool`.
    pub(crate) fn new(pool: PgPool) -> PgCommitter {
        PgCommitter {
            pool,
            conn: None,
            ahead: None,
            ensured_months: BTreeSet::new(),
        }
    }

    /// The writer's connection, taken from the pool when it has none.
    async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?.detach(),
        };
        Ok(self.conn.insert(conn))
    }
}

/// Opens a transaction on `conn` with the head lock, and reads under it.
async fn begin_locked(conn: &mut PgConnection) -> Result<Locked, BrokerError> {
    let read = conn.fetch_all(BEGIN_LOCKED).await?;
    let (head, generation) = match read.as_slice() {
        [head, generation] => (head, generation),
        _ => {
            return Err(BrokerError::Internal(format!(
                "the head lock returned {} rows, not 2",
                read.len()
            )))
        }
    };
    Ok((
        head.try_get(0)?,
        head.try_get(1)?,
        head.try_get(2)?,
        generation.try_get(0)?,
    ))
}

/// Appends under the lock `locked` read, and commits. `guarded`: the lock
/// was taken ahead of the batch, so the inserts check the generation again.
async fn append_under<'a>(
    conn: &mut PgConnection,
    rows: &[&'a NewRow],
    purge: Option<&PurgePlan>,
    chain: Chain,
    locked: Locked,
    guarded: bool,
) -> Result<Prepared<'a>, BrokerError> {
    let prepared = append_locked!(
        &mut *conn,
        sqlx::Postgres,
        INSERT_HEAD_PG,
        true,
        rows,
        purge,
        chain,
        super::partitions::drop_purged,
        locked,
        guarded
    );
    conn.execute("COMMIT").await?;
    Ok(prepared)
}

/// The locked path on `conn`, committed; under `ahead`, the lock taken
/// before the batch, when there is one. If the lookup generation changed
/// after that lock was taken, its inserts are refused: the transaction is
/// rolled back and the path runs again under a fresh lock, whose
/// generation is read after every answer in the batch.
async fn locked<'a>(
    conn: &mut PgConnection,
    rows: &[&'a NewRow],
    purge: Option<&PurgePlan>,
    chain: Chain,
    ahead: Option<Locked>,
) -> Result<Prepared<'a>, BrokerError> {
    if let Some(held) = ahead {
        match append_under(conn, rows, purge, chain, held, true).await {
            Ok(prepared) => return Ok(prepared),
            Err(e) => {
                tracing::debug!(error = %e, "records commit under the lock taken ahead refused; committing under a fresh lock");
                conn.execute("ROLLBACK").await?;
            }
        }
    }
    let held = begin_locked(conn).await?;
    append_under(conn, rows, purge, chain, held, false).await
}

#[async_trait]
impl Committer for PgCommitter {
    async fn make_room(&mut self, rows: &[&NewRow]) -> Result<(), BrokerError> {
        for row in rows {
            if self.ensured_months.contains(&row.part_month) {
                continue;
            }
            if self.ahead.take().is_some() {
                // A partition is never made under the head lock: making it
                // waits for inserts into `records` that may be waiting for
                // that lock, a cycle PostgreSQL cannot see (it passes
                // through this process). The commit takes a fresh lock.
                let released = match self.conn.as_mut() {
                    Some(conn) => conn.execute("ROLLBACK").await.is_ok(),
                    None => false,
                };
                if !released {
                    self.conn = None;
                }
            }
            super::partitions::ensure(&self.pool, row.part_month).await?;
            self.ensured_months.insert(row.part_month);
        }
        Ok(())
    }

    fn has_fast_path(&self) -> bool {
        true
    }

    async fn lock_ahead(&mut self) -> Result<bool, BrokerError> {
        if self.ahead.is_some() {
            return Ok(true);
        }
        let conn = self.conn().await?;
        match begin_locked(conn).await {
            Ok(held) => {
                self.ahead = Some(held);
                Ok(true)
            }
            Err(e) => {
                // Closing the connection rolls back what it left open.
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn commit_at(
        &mut self,
        rows: &[PreparedRow<'_>],
        old: (u64, &Hash),
        generation: Option<crate::store::lookup_generation::LookupStamp>,
    ) -> Result<(), AtFailure> {
        let ahead = self.ahead.take();
        let conn = self.conn().await.map_err(AtFailure::from)?;
        if ahead.is_some() {
            // The writer commits under a lock it took through
            // `commit_locked`; should it not, the lock is let go first.
            if let Err(e) = conn.execute("ROLLBACK").await {
                self.conn = None;
                return Err(AtFailure::Failed(e.into()));
            }
        }
        // A single statement is its own transaction.
        let done = chunk_statement!(sqlx::Postgres, INSERT_HEAD_PG, true, rows, old, generation)
            .build()
            .execute(conn)
            .await;
        // Refused by the database (the guard): the connection is fine.
        if done
            .as_ref()
            .is_err_and(|e| !matches!(e, sqlx::Error::Database(_)))
        {
            self.conn = None;
        }
        done.map(drop).map_err(AtFailure::from)
    }

    async fn commit_locked<'a>(
        &mut self,
        rows: &[&'a NewRow],
        purge: Option<&PurgePlan>,
        chain: Chain,
    ) -> Result<Prepared<'a>, BrokerError> {
        let ahead = self.ahead.take();
        let conn = self.conn().await?;
        let done = locked(conn, rows, purge, chain, ahead).await;
        if done.is_err() {
            // Closing the connection rolls back what it left open.
            self.conn = None;
        }
        done
    }
}
