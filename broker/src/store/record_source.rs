//! Long reads of records in sequence order (export, verification, the
//! witness endpoint): [`RecordSource`].
//!
//! On PostgreSQL the rows come through a server-side cursor in the caller's
//! snapshot ([`PgRecords`]); on a SQLite store without a file, through a
//! [`Cursor`] on it. On a SQLite file they are read on a connection and
//! thread of their own: through sqlx every row is decoded on its worker thread into sqlx's own
//! values and handed over, then decoded again into a [`RecordRow`]: an
//! export of CSV plus bundle ran at about 0.07 × `sqlite3 -csv` of the same
//! columns. Here rusqlite steps the statement on a blocking thread and
//! hands [`RecordRow`]s over in chunks through a bounded channel, so the
//! reading and the writing of an export run on both cores and memory stays
//! constant (at most [`CHUNKS_AHEAD`] chunks wait).
//!
//! The connection is read-only and opened on the file the store uses; the
//! whole read is one transaction, so it sees one state even while the
//! broker appends. Records up to a checkpoint never change, except by a
//! purge at the start of the chain; the read therefore checks that the
//! purge point it sees is the caller's snapshot's, and fails (`unavailable`,
//! "run again") rather than report a purged record as missing.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use crate::error::BrokerError;
use crate::records::db::{Cursor, RecordRow};
use crate::store::Pools;
use crate::store::Snapshot;

// A record row is decoded by position, every statement selecting
// `RECORD_COLUMNS`: looking each of its 19 columns up by name cost about a
// sixth of the decoding in a PostgreSQL export (`kakehashi-bench national`).
macro_rules! record_row_by_position {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for RecordRow {
            fn from_row(r: &'r $row) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(RecordRow {
                    seq: r.try_get(0)?,
                    recorded_at: r.try_get(1)?,
                    query_id: r.try_get(2)?,
                    permit_id: r.try_get(3)?,
                    flow_id: r.try_get(4)?,
                    flow_list_version: r.try_get(5)?,
                    procedure_code: r.try_get(6)?,
                    requester: r.try_get(7)?,
                    provider: r.try_get(8)?,
                    items: r.try_get(9)?,
                    requester_code: r.try_get(10)?,
                    requester_salt: r.try_get(11)?,
                    provider_code: r.try_get(12)?,
                    provider_salt: r.try_get(13)?,
                    outcome: r.try_get(14)?,
                    reason: r.try_get(15)?,
                    approver: r.try_get(16)?,
                    detail: r.try_get(17)?,
                    hash: r.try_get(18)?,
                })
            }
        }
    };
}
record_row_by_position!(sqlx::postgres::PgRow);
record_row_by_position!(sqlx::sqlite::SqliteRow);

/// Rows handed over at a time.
const CHUNK: usize = 4096;
/// Chunks read ahead of the consumer.
const CHUNKS_AHEAD: usize = 4;

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok(RecordRow {
        seq: r.get(0)?,
        recorded_at: r.get(1)?,
        query_id: r.get(2)?,
        permit_id: r.get(3)?,
        flow_id: r.get(4)?,
        flow_list_version: r.get(5)?,
        procedure_code: r.get(6)?,
        requester: r.get(7)?,
        provider: r.get(8)?,
        items: r.get(9)?,
        requester_code: r.get(10)?,
        requester_salt: r.get(11)?,
        provider_code: r.get(12)?,
        provider_salt: r.get(13)?,
        outcome: r.get(14)?,
        reason: r.get(15)?,
        approver: r.get(16)?,
        detail: r.get(17)?,
        hash: r.get(18)?,
    })
}

fn unavailable(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::refused(
        kakehashi_interfaces::ErrorCode::Unavailable,
        format!("reading provision records: {what}"),
    )
}

fn sqlite_error(e: rusqlite::Error) -> BrokerError {
    unavailable(e)
}

/// Reads `lo..=hi` and sends it in chunks until done or the receiver is gone.
fn read(
    path: &Path,
    lo: i64,
    hi: i64,
    cut_seq: i64,
    tx: &mpsc::Sender<Result<Vec<RecordRow>, BrokerError>>,
) -> Result<(), BrokerError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_error)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sqlite_error)?;
    let txn = conn.transaction().map_err(sqlite_error)?;
    let cut: i64 = txn
        .query_row("SELECT cut_seq FROM records_head WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map_err(sqlite_error)?;
    if cut != cut_seq {
        return Err(unavailable(
            "records were purged while they were being read; run it again",
        ));
    }
    let select = format!(
        "SELECT {} FROM records WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
        crate::records::db::RECORD_COLUMNS
    );
    let mut stmt = txn.prepare(&select).map_err(sqlite_error)?;
    let mut rows = stmt.query([lo, hi]).map_err(sqlite_error)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(r) = rows.next().map_err(sqlite_error)? {
        chunk.push(row(r).map_err(sqlite_error)?);
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
    Ok(())
}

/// Records `lo..=hi` in sequence order.
pub(crate) enum RecordSource {
    /// Chunks read on the caller's snapshot.
    Cursor(Cursor<RecordRow>),
    /// A SQLite file read ahead on a thread of its own.
    Direct(DirectRecords),
    /// A PostgreSQL cursor in the caller's snapshot.
    Postgres(PgRecords),
}

/// Names the cursors of one process apart.
static CURSORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records read through a server-side cursor: PostgreSQL plans the query
/// over every month partition once, at `DECLARE`, and each `FETCH` is one
/// short statement (within the statement timeout). A keyset query per
/// chunk was planned anew each time, which over 88 partitions cost 50–150
/// ms a chunk and held an export of 10 million records to ~17 000 rows/s
/// (`kakehashi-bench national`).
pub(crate) struct PgRecords {
    name: String,
    lo: i64,
    hi: i64,
    declared: bool,
    done: bool,
    buf: std::vec::IntoIter<RecordRow>,
}

impl PgRecords {
    fn new(lo: i64, hi: i64) -> Self {
        let n = CURSORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            name: format!("kk_records_{n}"),
            lo,
            hi,
            declared: false,
            done: lo > hi,
            buf: Vec::new().into_iter(),
        }
    }

    async fn next(&mut self, snap: &mut Snapshot) -> Result<Option<RecordRow>, BrokerError> {
        loop {
            if let Some(r) = self.buf.next() {
                return Ok(Some(r));
            }
            if self.done {
                return Ok(None);
            }
            let Snapshot::Postgres(tx) = snap else {
                return Err(BrokerError::Internal(
                    "a PostgreSQL cursor on a SQLite snapshot".into(),
                ));
            };
            if !self.declared {
                // The bounds are integers, written into the statement.
                let sql = format!(
                    "DECLARE {} NO SCROLL CURSOR FOR SELECT {} FROM records \
                     WHERE seq >= {} AND seq <= {} ORDER BY seq",
                    self.name,
                    crate::records::db::RECORD_COLUMNS,
                    self.lo,
                    self.hi
                );
                sqlx::query(&sql)
                    .persistent(false)
                    .execute(&mut **tx)
                    .await?;
                self.declared = true;
            }
            let fetch = format!("FETCH {CHUNK} FROM {}", self.name);
            let rows: Vec<RecordRow> = sqlx::query_as(&fetch)
                .persistent(false)
                .fetch_all(&mut **tx)
                .await?;
            if rows.len() < CHUNK {
                self.done = true;
            }
            self.buf = rows.into_iter();
        }
    }
}

impl RecordSource {
    /// Records `lo..=hi` of the store, whose snapshot's purge point is `cut_seq`.
    pub fn open(pools: &Pools, lo: i64, hi: i64, cut_seq: u64) -> Self {
        match pools.sqlite_file() {
            Some(path) if !path.as_os_str().is_empty() => {
                RecordSource::Direct(DirectRecords::open(path, lo, hi, cut_seq))
            }
            Some(_) => RecordSource::Cursor(Cursor::new(lo, hi)),
            None => RecordSource::Postgres(PgRecords::new(lo, hi)),
        }
    }

    /// The next record, or `None` after the last.
    pub async fn next(&mut self, snap: &mut Snapshot) -> Result<Option<RecordRow>, BrokerError> {
        match self {
            RecordSource::Cursor(c) => c.next(snap).await,
            RecordSource::Direct(d) => d.next().await,
            RecordSource::Postgres(p) => p.next(snap).await,
        }
    }
}

/// Records `lo..=hi` of a SQLite file in sequence order, read ahead on a
/// blocking thread.
pub(crate) struct DirectRecords {
    rx: mpsc::Receiver<Result<Vec<RecordRow>, BrokerError>>,
    buf: std::vec::IntoIter<RecordRow>,
}

impl DirectRecords {
    /// Starts reading `lo..=hi` from the database file at `path`.
    fn open(path: PathBuf, lo: i64, hi: i64, cut_seq: u64) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        let cut_seq = crate::records::db::to_i64(cut_seq);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = read(&path, lo, hi, cut_seq, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Self {
            rx,
            buf: Vec::new().into_iter(),
        }
    }

    async fn next(&mut self) -> Result<Option<RecordRow>, BrokerError> {
        loop {
            if let Some(r) = self.buf.next() {
                return Ok(Some(r));
            }
            match self.rx.recv().await {
                Some(chunk) => self.buf = chunk?.into_iter(),
                None => return Ok(None),
            }
        }
    }
}
