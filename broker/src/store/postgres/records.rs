//! How PostgreSQL commits provision records, into month partitions made
//! ahead of use (a purge drops whole months):
//!
//! - the common commit is one statement (one round trip instead of four:
//!   begin, lock, insert, commit);
//! - the locked path is three round trips: `BEGIN` with the head lock and
//!   the lookup generation read under it, the inserts, `COMMIT`. It is the
//!   path of every commit while other nodes move the head, so each of its
//!   round trips is paid on every commit there, by the database and by the
//!   writer (benches/README, cluster runs 13–18).
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

/// The records writer's committer on PostgreSQL.
pub(crate) struct PgCommitter {
    pool: PgPool,
    /// The writer's connection, taken out of `pool` and kept; dropped after
    /// any error (which ends a transaction left open), and the next commit
    /// takes a new one.
    conn: Option<PgConnection>,
    /// Months whose partitions exist (created on first use).
    ensured_months: BTreeSet<i32>,
}

impl PgCommitter {
    /// A committer on `pool`.
    pub(crate) fn new(pool: PgPool) -> PgCommitter {
        PgCommitter {
            pool,
            conn: None,
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

/// The locked path on `conn`, committed.
async fn locked<'a>(
    conn: &mut PgConnection,
    rows: &[&'a NewRow],
    purge: Option<&PurgePlan>,
    chain: Chain,
) -> Result<Prepared<'a>, BrokerError> {
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
    let locked: (i64, Vec<u8>, i64, i64) = (
        head.try_get(0)?,
        head.try_get(1)?,
        head.try_get(2)?,
        generation.try_get(0)?,
    );
    let prepared = append_locked!(
        &mut *conn,
        sqlx::Postgres,
        INSERT_HEAD_PG,
        true,
        rows,
        purge,
        chain,
        super::partitions::drop_purged,
        locked
    );
    conn.execute("COMMIT").await?;
    Ok(prepared)
}

#[async_trait]
impl Committer for PgCommitter {
    async fn make_room(&mut self, rows: &[&NewRow]) -> Result<(), BrokerError> {
        for row in rows {
            if !self.ensured_months.contains(&row.part_month) {
                super::partitions::ensure(&self.pool, row.part_month).await?;
                // Marked once made: after a failure (the database out of
                // reach) the next commit tries again, rather than letting
                // the month's rows fall into the default partition, which
                // a purge empties row by row instead of dropping.
                self.ensured_months.insert(row.part_month);
            }
        }
        Ok(())
    }

    fn has_fast_path(&self) -> bool {
        true
    }

    async fn commit_at(
        &mut self,
        rows: &[PreparedRow<'_>],
        old: (u64, &Hash),
        generation: Option<crate::store::lookup_generation::LookupStamp>,
    ) -> Result<(), AtFailure> {
        let conn = self.conn().await.map_err(AtFailure::from)?;
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
        let conn = self.conn().await?;
        let done = locked(conn, rows, purge, chain).await;
        if done.is_err() {
            // Closing the connection rolls back what it left open.
            self.conn = None;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::PgCommitter;
    use crate::records::{Outcome, RecordDraft};
    use crate::store::records::rows::NewRow;
    use crate::store::records::Committer;
    use sqlx::Executor;

    /// A month whose partitions could not be made (here the database kept
    /// the partition lock past the statement timeout) is tried again by the
    /// next commit, so its rows do not fall into the default partition.
    #[tokio::test]
    async fn a_month_whose_partition_could_not_be_made_is_tried_again_postgres() {
        let Some(pool) = crate::store::test_databases::fresh_postgres_pool("partition_retry").await
        else {
            return;
        };
        let requester = kakehashi_interfaces::OrgId::new("city-months").expect("org id");
        let at = time::macros::datetime!(2099-03-15 12:00 UTC);
        let row = NewRow::new(RecordDraft::new("q-1", requester, Outcome::Provided), at);
        let partition = super::super::partitions::partition_name(row.part_month);
        let exists = || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = $1")
                .bind(&partition)
                .fetch_one(&pool)
                .await
                .expect("read the catalogue");
            n == 1
        };
        let mut blocker = pool.acquire().await.expect("a connection");
        blocker
            .execute("SELECT pg_advisory_lock(hashtext('kakehashi.records.partitions'))")
            .await
            .expect("partition lock held");
        // The committer's statements time out after 300 ms, not the
        // store's 5 s, so the test does not wait out the default.
        let quick = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(
                (*pool.connect_options())
                    .clone()
                    .options([("statement_timeout", "300")]),
            )
            .await
            .expect("a pool with a short statement timeout");
        let mut committer = PgCommitter::new(quick);
        let refused = std::time::Instant::now();
        assert!(
            committer.make_room(&[&row]).await.is_err(),
            "the partition lock is held past the statement timeout"
        );
        assert!(
            refused.elapsed() < std::time::Duration::from_secs(3),
            "the short statement timeout applied"
        );
        assert!(!exists().await);
        blocker
            .execute("SELECT pg_advisory_unlock(hashtext('kakehashi.records.partitions'))")
            .await
            .expect("partition lock let go");
        committer.make_room(&[&row]).await.expect("made now");
        assert!(exists().await, "the next commit made the month's partition");
    }
}
