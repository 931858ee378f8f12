//! Long reads of a SQLite file's records ([`DirectRecords`]): on a
//! connection and thread of their own. Through sqlx every row is decoded on
//! its worker thread into sqlx's own values and handed over, then decoded
//! again into a [`RecordRow`]: an export of CSV plus bundle runs at about
//! 0.07 × `sqlite3 -csv` of the same columns that way. Here rusqlite steps the
//! statement on a blocking thread and hands [`RecordRow`]s over in chunks
//! through a bounded channel, so the reading and the writing of an export
//! run on both cores and memory stays constant (at most [`CHUNKS_AHEAD`]
//! chunks wait).
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
use crate::store::records::table::RecordRow;

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

pub(crate) fn unavailable(what: impl std::fmt::Display) -> BrokerError {
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
        crate::store::records::table::RECORD_COLUMNS
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

/// Records `lo..=hi` of a SQLite file in sequence order, read ahead on a
/// blocking thread.
pub(crate) struct DirectRecords {
    rx: mpsc::Receiver<Result<Vec<RecordRow>, BrokerError>>,
    buf: std::vec::IntoIter<RecordRow>,
}

impl DirectRecords {
    /// Starts reading `lo..=hi` from the database file at `path`.
    pub(crate) fn open(path: PathBuf, lo: i64, hi: i64, cut_seq: u64) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        let cut_seq = crate::store::records::table::to_i64(cut_seq);
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

    pub(crate) async fn next(&mut self) -> Result<Option<RecordRow>, BrokerError> {
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
