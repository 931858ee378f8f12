//! How SQLite commits provision records: through the writer's own
//! connection when it has one ([`super::direct`]), else under sqlx's single
//! writer with the head row locked.

use async_trait::async_trait;
use kakehashi_interfaces::audit::Hash;
use sqlx::SqlitePool;

use super::direct::{DirectError, DirectWriter};
use crate::error::BrokerError;
use crate::store::lookup_generation::GENERATION_SQL;
use crate::store::records::rows::{NewRow, Prepared, PreparedRow, PurgePlan};
use crate::store::records::{
    append_locked, AtFailure, Chain, Committer, INSERT_HEAD_SQLITE, LOCK_HEAD,
};

/// The records writer's committer on SQLite.
pub(crate) struct SqliteCommitter {
    /// sqlx's single writer: held for every commit, so within the broker
    /// there is one writer at a time.
    write: SqlitePool,
    /// The writer's own connection for the common commit; `None` when it
    /// could not open or the writer runs on the shared runtime. In a mutex
    /// only so the writer's future may move between threads (a connection
    /// is not `Sync`); only the writer ever locks it.
    direct: Option<std::sync::Mutex<DirectWriter>>,
}

impl SqliteCommitter {
    /// A committer on `write`; with `own_connection`, one that opens the
    /// writer's own connection to the same file (on the writer's thread).
    pub(crate) fn new(write: SqlitePool, own_connection: bool) -> SqliteCommitter {
        let direct = own_connection
            .then(|| {
                let path = write.connect_options().get_filename().to_path_buf();
                match DirectWriter::open(&path) {
                    Ok(direct) => Some(std::sync::Mutex::new(direct)),
                    Err(e) => {
                        // Commits still go through sqlx, only slower.
                        tracing::warn!(error = %e, "records writer's own SQLite connection could not open");
                        None
                    }
                }
            })
            .flatten();
        SqliteCommitter { write, direct }
    }
}

/// SQLite keeps every record in one table: a purge has no partition to drop.
async fn no_partitions(_: &mut sqlx::SqliteConnection, _: i64) -> Result<(), sqlx::Error> {
    Ok(())
}

#[async_trait]
impl Committer for SqliteCommitter {
    async fn make_room(&mut self, _: &[&NewRow]) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Only with the writer's own connection; without it every commit
    /// takes the locked path.
    fn has_fast_path(&self) -> bool {
        self.direct.is_some()
    }

    async fn commit_at(
        &mut self,
        rows: &[PreparedRow<'_>],
        old: (u64, &Hash),
        generation: Option<crate::store::lookup_generation::LookupStamp>,
    ) -> Result<(), AtFailure> {
        let Some(direct) = self.direct.as_mut().and_then(|m| m.get_mut().ok()) else {
            return Err(AtFailure::Refused(
                "no SQLite connection of the writer's own".into(),
            ));
        };
        // sqlx's writer stays held (unused) until this commit is done: one
        // writer at a time within the broker.
        let _one_writer = self.write.acquire().await?;
        match direct.commit_at(rows, old, generation.map(|s| s.generation())) {
            Ok(()) => Ok(()),
            Err(DirectError::HeadMoved) => Err(AtFailure::Refused("the records head moved".into())),
            Err(DirectError::LookupChanged) => {
                Err(AtFailure::Refused("the lookup generation changed".into()))
            }
            Err(e) => {
                // Rolled back as a whole; sqlx's locked path then commits,
                // or reports an error that persists.
                tracing::warn!(error = %e, "records commit on the writer's own SQLite connection failed; retrying through sqlx");
                Err(AtFailure::Refused(e.to_string()))
            }
        }
    }

    async fn commit_locked<'a>(
        &mut self,
        rows: &[&'a NewRow],
        purge: Option<&PurgePlan>,
        chain: Chain,
    ) -> Result<Prepared<'a>, BrokerError> {
        let mut tx = self.write.begin().await?;
        // The head lock first, so the transaction is a writer from the start
        // (no read-to-write upgrade); the generation under it.
        let (head_seq, head_hash, cut_seq): (i64, Vec<u8>, i64) =
            sqlx::query_as(LOCK_HEAD).fetch_one(&mut *tx).await?;
        let generation: i64 = sqlx::query_scalar(GENERATION_SQL)
            .fetch_one(&mut *tx)
            .await?;
        let prepared = append_locked!(
            &mut *tx,
            sqlx::Sqlite,
            INSERT_HEAD_SQLITE,
            false,
            rows,
            purge,
            chain,
            no_partitions,
            (head_seq, head_hash, cut_seq, generation)
        );
        tx.commit().await?;
        Ok(prepared)
    }
}
