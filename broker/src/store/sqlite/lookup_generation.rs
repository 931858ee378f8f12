//! The lookup generation read on SQLite without leaving the task.
//!
//! The batching task reads the generation before it reads the database for
//! lookups the cache does not hold (or asked `fresh`). Through sqlx it is a
//! hand-off to the connection's worker thread and back: two thread
//! wake-ups for a one-row read (benches/README.md, "Design decisions in force"). This
//! connection is read in place instead, synchronously: a point read of a
//! one-page table, which a WAL reader does without waiting for the writer.
//!
//! It never sleeps on the runtime's thread: the busy timeout is zero, and a
//! read SQLite refuses (`SQLITE_BUSY` in a rare moment of the WAL's
//! bookkeeping) is the caller's cue to ask the pool instead.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

use crate::error::BrokerError;
use crate::store::backend::GenerationReader;
use crate::store::lookup_generation::GENERATION_SQL;
use crate::store::Pools;

/// The lookup generation on SQLite: read in place on the task's own
/// connection while SQLite answers at once, else through the pool. A busy
/// file is a moment's refusal; any other failure gives the connection up,
/// so a broken one does not cost every batch two reads.
pub(crate) struct SqliteGeneration {
    /// `None` when it could not open, or after it failed.
    direct: Option<DirectGeneration>,
    pools: Pools,
}

impl SqliteGeneration {
    /// Opens the task's own connection on the file of `pools`.
    pub(crate) fn open(pools: Pools) -> SqliteGeneration {
        let direct = pools.sqlite_file().and_then(|path| {
            DirectGeneration::open(&path)
                .map_err(|e| {
                    // Reads still go through the pool, only dearer.
                    tracing::warn!(error = %e, "the lookups' own SQLite connection could not open");
                })
                .ok()
        });
        SqliteGeneration { direct, pools }
    }
}

#[async_trait]
impl GenerationReader for SqliteGeneration {
    async fn read(&mut self) -> Result<i64, BrokerError> {
        if let Some(conn) = self.direct.as_mut() {
            match conn.read() {
                Ok(n) => return Ok(n),
                Err(e) if is_busy(&e) => {
                    tracing::debug!(error = %e, "lookup generation read in place refused; asking the pool")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the lookups' own SQLite connection failed; reading through the pool from now on");
                    self.direct = None;
                }
            }
        }
        crate::store::lookup_generation::generation_now(&self.pools).await
    }
}

/// A read-only connection of the batching task's own.
pub(crate) struct DirectGeneration {
    conn: Connection,
}

impl DirectGeneration {
    /// Opens the broker's SQLite file read-only.
    pub(crate) fn open(path: &Path) -> rusqlite::Result<DirectGeneration> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut direct = DirectGeneration { conn };
        // Fail here, not on the first query, if the table is not there;
        // at start-up a moment's wait (another connection closing, say) is
        // fine, on the query path it is not.
        direct.conn.busy_timeout(Duration::from_secs(2))?;
        direct.read()?;
        direct.conn.busy_timeout(Duration::ZERO)?;
        Ok(direct)
    }

    /// The generation committed now. Each read is a transaction of its
    /// own (the statement is reset when the row is read), so it sees every
    /// commit made before it, by any connection. `&mut`: the connection is
    /// not `Sync`, and the batching task holds it across its awaits.
    pub(crate) fn read(&mut self) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached(GENERATION_SQL)?
            .query_row([], |row| row.get(0))
    }
}

/// Whether SQLite refused for a moment (the file busy or locked) rather
/// than for good.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    #[tokio::test]
    async fn reads_what_another_connection_committed_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.db");
        let store = SqliteStore::open(&path).await.expect("store");
        let mut direct = DirectGeneration::open(&path).expect("open");
        let before = direct.read().expect("read");

        crate::store::lookup_generation::set_generation(&store.pools(), before + 5).await;
        assert_eq!(direct.read().expect("read"), before + 5);

        // A second read with nothing committed in between agrees: the
        // statement holds no snapshot, and reading changes nothing.
        assert_eq!(direct.read().expect("read"), before + 5);
    }

    #[tokio::test]
    async fn a_refused_read_in_place_is_asked_of_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("k.db"))
            .await
            .expect("store");
        let pools = store.pools();
        crate::store::lookup_generation::set_generation(&pools, 41).await;

        // A connection whose reads now fail: its file lost the table.
        let other = dir.path().join("other.db");
        // Kept open: while its pools close, a read-only open can meet a busy file.
        let _other_store = SqliteStore::open(&other).await.expect("other store");
        let mut direct = DirectGeneration::open(&other).expect("open");
        Connection::open(&other)
            .and_then(|c| c.execute_batch("DROP TABLE lookup_generation"))
            .expect("drop");
        let refused = direct.read().expect_err("the table is gone");
        assert!(!is_busy(&refused), "{refused}");

        let mut how = SqliteGeneration {
            direct: Some(direct),
            pools: pools.clone(),
        };
        let n = how.read().await.expect("the pool answers");
        assert_eq!(n, 41);
        // Not a busy moment: the connection is given up, and the next read
        // goes straight to the pool.
        assert!(how.direct.is_none(), "a failing connection was kept");
        let n = how.read().await.expect("the pool answers");
        assert_eq!(n, 41);
    }

    #[test]
    fn a_file_without_the_table_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.db");
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE other (x INTEGER)"))
            .expect("create");
        assert!(DirectGeneration::open(&path).is_err());
        assert!(DirectGeneration::open(&dir.path().join("absent.db")).is_err());
    }
}
