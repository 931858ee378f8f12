//! SQLite's side of [`Backend`]: one file, one writer, no partitions; its
//! planner walks the index a statement names.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::records::SqliteCommitter;
use crate::error::BrokerError;
use crate::store::backend::{Backend, CommitTiming, SearchDialect, Stmt};
use crate::store::records::table::to_i64;
use crate::store::records::Committer;
use crate::store::Snapshot;

/// The group commit's wait on SQLite unless configured: an fsync of the
/// WAL is shared by the queries that arrive within it.
pub const COMMIT_DELAY_US: u64 = 1_000;

/// The SQLite backend over its two pools.
pub(crate) struct SqliteBackend<'a> {
    /// The single writer.
    pub write: &'a SqlitePool,
    /// Read-only connections.
    pub read: &'a SqlitePool,
}

impl SqliteBackend<'_> {
    /// A statement of `($1 at, $2 after, $3 upto`, then `text` when
    /// given`)` that answers one sequence number, or none (no row, or a NULL
    /// aggregate).
    async fn seq_between(
        &self,
        sql: &str,
        (at, after, upto): (&str, u64, u64),
        text: Option<&str>,
    ) -> Result<Option<u64>, BrokerError> {
        let mut query = sqlx::query_scalar(sql)
            .bind(at)
            .bind(to_i64(after))
            .bind(to_i64(upto));
        if let Some(text) = text {
            query = query.bind(text);
        }
        let row: Option<Option<i64>> = query.fetch_optional(self.read).await?;
        Ok(row.flatten().and_then(|s| u64::try_from(s).ok()))
    }
}

/// The search indexes of migration 0106; `NOT INDEXED` walks the primary key.
fn index_hint(index: Option<&str>) -> String {
    match index {
        Some(index) => format!(" INDEXED BY {index}"),
        None => " NOT INDEXED".into(),
    }
}

#[async_trait]
impl Backend for SqliteBackend<'_> {
    /// Only this process and the command line write the file.
    fn org_cache_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// One file, one broker.
    fn shared(&self) -> Option<std::sync::Arc<dyn crate::store::backend::SharedDatabase>> {
        None
    }

    /// A local file does not go silent the way a network does: SQLite's
    /// busy timeout bounds a wait for the lock.
    fn request_bound(&self, _: Duration) -> Option<Duration> {
        None
    }

    fn commit_timing(&self) -> CommitTiming {
        CommitTiming {
            delay_us: COMMIT_DELAY_US,
            interval_us: 0,
        }
    }

    fn committer(&self, own_thread: bool) -> Box<dyn Committer> {
        Box::new(SqliteCommitter::new(self.write.clone(), own_thread))
    }

    fn spawn_upkeep(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
        every: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(super::wal::checkpoint_task(
            (*self.write.connect_options()).clone(),
            stop,
            every,
        )))
    }

    async fn open_records(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The writer zeroes deleted rows (`secure_delete`); a checkpoint that
    /// truncates the WAL copies those pages into the file and drops the
    /// frames that still hold them as they were. It runs on a connection
    /// of its own that never waits (busy timeout 0), so record commits do
    /// not queue behind it: while a commit or a reader's snapshot is under
    /// way it is tried again, ten times 50 ms apart, then left to the WAL's
    /// reuse (logged).
    async fn after_erasure(&self) -> Result<(), BrokerError> {
        let options = (*self.write.connect_options())
            .clone()
            .busy_timeout(Duration::ZERO);
        let mut conn = sqlx::ConnectOptions::connect(&options).await?;
        // Busy is a row saying so, or (without a busy timeout) an error:
        // both are tried again; the last error is logged if none succeeds.
        let mut last_error = None;
        let mut truncated = false;
        for _ in 0..10 {
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut conn)
                .await
            {
                Ok((0, _, _)) => {
                    truncated = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = sqlx::Connection::close(conn).await;
        if !truncated {
            match last_error {
                Some(e) => tracing::warn!(error = %e, "the WAL could not be truncated after an erasure; its frames are overwritten as it is reused"),
                None => tracing::warn!("the WAL could not be truncated after an erasure (the database was busy); its frames are overwritten as it is reused"),
            }
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot, BrokerError> {
        Ok(Snapshot::Sqlite(self.read.begin().await?))
    }

    async fn first_seq_at_or_after(
        &self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError> {
        self.seq_between(
            "SELECT MIN(seq) FROM records WHERE recorded_at >= $1 AND seq > $2 AND seq <= $3",
            (at, after, upto),
            None,
        )
        .await
    }

    async fn first_young_seq(
        &self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError> {
        // `+recorded_at` keeps SQLite off the time index.
        self.seq_between(
            "SELECT seq FROM records WHERE seq > $2 AND seq <= $3 AND +recorded_at >= $1
             ORDER BY seq LIMIT 1",
            (at, after, upto),
            None,
        )
        .await
    }

    /// SQLite keeps records in one table: every purge deletes rows.
    async fn whole_unit_end(&self, _: u64, _: u64) -> Result<Option<u64>, BrokerError> {
        Ok(None)
    }

    async fn last_seq_before(
        &self,
        at: &str,
        since: Option<&str>,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError> {
        // Without `since`, every time: an empty text is before every stored one.
        self.seq_between(
            "SELECT MAX(seq) FROM records WHERE recorded_at < $1 AND seq > $2 AND seq <= $3
             AND recorded_at >= $4",
            (at, after, upto),
            Some(since.unwrap_or("")),
        )
        .await
    }

    fn search_dialect(&self) -> SearchDialect {
        SearchDialect {
            names_indexes: true,
            month_partitions: false,
            index_hint,
        }
    }

    async fn explain(&self, st: &Stmt) -> Result<Vec<String>, BrokerError> {
        let sql = format!("EXPLAIN QUERY PLAN {}", st.sql);
        let rows: Vec<(i64, i64, i64, String)> = crate::store::fetch_all(
            &crate::store::Pools::Sqlite {
                write: self.write.clone(),
                read: self.read.clone(),
            },
            &Stmt {
                sql,
                args: st.args.clone(),
            },
        )
        .await?;
        // Indent each node under its parent, as the sqlite3 shell does.
        let mut depth: Vec<(i64, usize)> = Vec::new();
        Ok(rows
            .into_iter()
            .map(|(id, parent, _, detail)| {
                let level = depth
                    .iter()
                    .find(|(i, _)| *i == parent)
                    .map_or(0, |(_, l)| l + 1);
                depth.push((id, level));
                format!("{}{detail}", "  ".repeat(level))
            })
            .collect())
    }
}
