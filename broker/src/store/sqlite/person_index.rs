//! Which records concern a person (R18 disclosure), on SQLite.
//!
//! Why not a plain index on `records(requester_code)` and `(provider_code)`:
//! per-org codes are random, so each record lands on a random leaf of both
//! indexes, and the group commit writes and fsyncs those pages with every
//! transaction. Measured on the query benchmark it cost about 30 % of the
//! full-pipeline rate (5,650 → 8,000 q/s without them; benches/README.md).
//!
//! Instead the index lives in a side file next to the database, filled by a
//! background task in large batches sorted by key, so one pass writes each
//! leaf once, outside the commit path and without an fsync per batch. It is
//! derived data, never part of the hash chain:
//! - entries and the high-water mark commit together;
//! - the mark remembers the hash of the record it ends at, so a database
//!   restored or replaced under the file is noticed and the index rebuilt;
//! - a deleted or damaged file is rebuilt from the records;
//! - [`PersonIndex::lookup`] returns the mark with the entries, and the
//!   caller scans the records past the mark, so a disclosure is complete
//!   however far the indexer lags.
//!
//! PostgreSQL keeps ordinary indexes: its WAL logs tuples, not pages.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::store::records::table;
use crate::store::Pools;

/// Entries are grouped by `seq >> BUCKET_BITS` first: a batch then lands in
/// the small, fresh region of the current bucket (≤ 2 × 4,096 entries, a
/// few dozen pages) instead of all over an index that grows for seven years,
/// and a lookup probes each bucket once, inside SQLite (about 60,000 probes
/// for 250 million records).
const BUCKET_BITS: u32 = 12;
/// Records read and indexed per transaction.
const BATCH: i64 = 16_384;

/// Indexes the records in `(?1, ?2]` in one statement (`?3`: the bucket
/// bits), sorted by key so a batch visits each leaf once. It runs inside
/// SQLite over the records' database, attached as `rec`: no record crosses
/// into Rust, where streaming them row by row from sqlx's worker thread
/// cost more than the rest of the step (benches/README.md, "Design decisions in force").
const INDEX_RANGE: &str = "INSERT OR IGNORE INTO entries (bucket, org, code, seq)
     SELECT seq >> ?3, requester, requester_code, seq FROM rec.records
      WHERE seq > ?1 AND seq <= ?2 AND requester_code IS NOT NULL
     UNION ALL
     SELECT seq >> ?3, provider, provider_code, seq FROM rec.records
      WHERE seq > ?1 AND seq <= ?2 AND provider IS NOT NULL AND provider_code IS NOT NULL
     ORDER BY 1, 2, 3, 4";

/// The side-file index of one SQLite database.
#[derive(Clone, Debug)]
pub(crate) struct PersonIndex {
    pool: SqlitePool,
}

/// What [`PersonIndex::lookup`] found.
pub(crate) struct Indexed {
    /// Records up to here are indexed; the caller scans those after it.
    pub mark: u64,
    /// Sequences of the records indexed under the org's code, ascending.
    pub seqs: Vec<i64>,
}

/// The side file of the database at `main`: `<main>.person-index`.
pub(crate) fn side_file(main: &Path) -> PathBuf {
    let mut name = main.as_os_str().to_owned();
    name.push(".person-index");
    PathBuf::from(name)
}

/// The file of the main database, or `None` for an in-memory one.
async fn main_file(pool: &SqlitePool) -> Result<Option<PathBuf>, BrokerError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as("PRAGMA database_list")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .find(|(_, name, _)| name == "main")
        .map(|(_, _, file)| file)
        .filter(|file| !file.is_empty())
        .map(PathBuf::from))
}

impl PersonIndex {
    /// Opens (creating if missing) the index beside the SQLite database of
    /// `pools`; `None` on PostgreSQL and for an in-memory database.
    pub async fn open(pools: &Pools) -> Result<Option<PersonIndex>, BrokerError> {
        let Pools::Sqlite { write, .. } = pools else {
            return Ok(None);
        };
        let Some(main) = main_file(write).await? else {
            return Ok(None);
        };
        let options =
            SqliteConnectOptions::from_str(&format!("sqlite://{}", side_file(&main).display()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Derived data: a crash may lose the last batches, which are
                // redone from the mark; it cannot tear entries from the mark.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
        // Each connection sees the records as `rec`, so a batch is indexed
        // by one statement (INDEX_RANGE).
        let records_file = main.to_string_lossy().into_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let records_file = records_file.clone();
                Box::pin(async move {
                    sqlx::query("ATTACH DATABASE ? AS rec")
                        .bind(records_file)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS entries (
                 bucket INTEGER NOT NULL, org TEXT NOT NULL, code TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 PRIMARY KEY (bucket, org, code, seq)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS mark (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL, hash BLOB, purged_seq INTEGER NOT NULL);
             INSERT OR IGNORE INTO mark (id, seq, hash, purged_seq) VALUES (1, 0, NULL, 0);",
        )
        .execute(&pool)
        .await?;
        Ok(Some(PersonIndex { pool }))
    }

    /// Closes the side file's connections (at shutdown, after the task
    /// stopped), so its WAL is checkpointed and its files settle.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Sequences of records where `org` took part under `code`, up to the mark.
    pub async fn lookup(&self, org: &str, code: &str) -> Result<Indexed, BrokerError> {
        // One read transaction: the mark and the entries from one snapshot.
        let mut tx = self.pool.begin().await?;
        let (mark, purged): (i64, i64) =
            sqlx::query_as("SELECT seq, purged_seq FROM mark WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let seqs: Vec<(i64,)> = if mark > 0 {
            // One probe of the primary key per bucket, driven by SQLite.
            sqlx::query_as(
                "WITH RECURSIVE b(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM b WHERE n < $2)
                 SELECT e.seq FROM b JOIN entries e
                   ON e.bucket = b.n AND e.org = $3 AND e.code = $4 AND e.seq <= $5
                 ORDER BY e.seq",
            )
            .bind(purged >> BUCKET_BITS)
            .bind(mark >> BUCKET_BITS)
            .bind(org)
            .bind(code)
            .bind(mark)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(Indexed {
            mark: u64::try_from(mark).unwrap_or(0),
            seqs: seqs.into_iter().map(|(s,)| s).collect(),
        })
    }

    /// Brings the index up to the records' head, batch by batch; returns the
    /// number of records indexed.
    pub async fn catch_up(&self, pools: &Pools) -> Result<u64, BrokerError> {
        let mut indexed = 0;
        loop {
            match self.step(pools).await? {
                0 => return Ok(indexed),
                n => indexed += n,
            }
        }
    }

    /// Indexes one batch of records past the mark (after noticing a replaced
    /// database or a purge); returns how many, 0 when caught up.
    async fn step(&self, pools: &Pools) -> Result<u64, BrokerError> {
        let head = table::read_head(pools).await?;
        let (mut mark, mark_hash, purged): (i64, Option<Vec<u8>>, i64) =
            sqlx::query_as("SELECT seq, hash, purged_seq FROM mark WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        if self
            .replaced(pools, &head, mark, mark_hash.as_deref())
            .await?
        {
            tracing::warn!("the person index does not match the records; rebuilding it");
            sqlx::raw_sql(
                "DELETE FROM entries; UPDATE mark SET seq = 0, hash = NULL, purged_seq = 0;",
            )
            .execute(&self.pool)
            .await?;
            mark = 0;
        } else if table::to_i64(head.cut_seq) > purged {
            // A retention purge: drop the entries of deleted records.
            let cut = table::to_i64(head.cut_seq);
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM entries WHERE bucket <= $1 AND seq <= $2")
                .bind(cut >> BUCKET_BITS)
                .bind(cut)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE mark SET purged_seq = $1 WHERE id = 1")
                .bind(cut)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        let mut tx = self.pool.begin().await?;
        // The batch: at most BATCH records past the mark, as far as this
        // transaction's snapshot of the records goes; its size, last
        // sequence and that record's hash.
        let (count, last, last_hash): (i64, Option<i64>, Option<Vec<u8>>) = sqlx::query_as(
            "SELECT n, last, (SELECT hash FROM rec.records WHERE seq = last)
               FROM (SELECT COUNT(*) AS n, MAX(seq) AS last
                       FROM (SELECT seq FROM rec.records WHERE seq > ?1 ORDER BY seq LIMIT ?2))",
        )
        .bind(mark)
        .bind(BATCH)
        .fetch_one(&mut *tx)
        .await?;
        let Some(last_seq) = last else {
            return Ok(0);
        };
        sqlx::query(INDEX_RANGE)
            .bind(mark)
            .bind(last_seq)
            .bind(BUCKET_BITS)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE mark SET seq = $1, hash = $2 WHERE id = 1")
            .bind(last_seq)
            .bind(&last_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Whether the records under the index are not the ones it was built
    /// from: the mark is past the head, or the record at the mark (when not
    /// purged) has another hash.
    async fn replaced(
        &self,
        pools: &Pools,
        head: &table::Head,
        mark: i64,
        mark_hash: Option<&[u8]>,
    ) -> Result<bool, BrokerError> {
        if mark == 0 {
            return Ok(false);
        }
        if mark > table::to_i64(head.seq) {
            return Ok(true);
        }
        if mark <= table::to_i64(head.cut_seq) {
            return Ok(false);
        }
        let stored: Option<(Vec<u8>,)> = crate::on_pool!(pools, read, |pool| {
            sqlx::query_as("SELECT hash FROM records WHERE seq = $1")
                .bind(mark)
                .fetch_optional(pool)
                .await?
        });
        Ok(stored.map(|(h,)| h).as_deref() != mark_hash)
    }
}

/// Keeps the index caught up every `every` until `stop` changes.
pub(crate) async fn index_task(
    index: PersonIndex,
    pools: Pools,
    mut stop: watch::Receiver<bool>,
    every: Duration,
) {
    loop {
        // Batch after batch while behind, yielding to a stop in between.
        loop {
            match index.step(&pools).await {
                Ok(n) if n > 0 && !*stop.borrow() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "person index not updated");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
