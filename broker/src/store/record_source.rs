//! Long reads of records in sequence order: [`RecordSource`] row by row
//! (verification, the witness endpoint), [`read_in_order`] with the
//! checkpoints among them, on a task of its own (export). On PostgreSQL the
//! rows come in slices of sequence numbers, one statement each, in the
//! caller's snapshot ([`postgres::record_source`](super::postgres::record_source));
//! on a SQLite file they are read on a connection and thread of their own
//! ([`sqlite::record_source`](super::sqlite::record_source)); on a SQLite
//! store without a file, through a [`Cursor`] on the snapshot.

use sqlx::postgres::PgRow;
use tokio::sync::mpsc;

use super::postgres::record_source::PgRecords;
use super::sqlite::record_source::DirectRecords;
use crate::error::BrokerError;
use crate::store::records::table::{CheckpointRow, Cursor, RecordRow, RecordView};
use crate::store::Pools;
use crate::store::Snapshot;

/// A record row's 19 fields, each read by position with `$row.$get(i)`, as
/// a `$record` ([`RecordRow`] or [`RecordView`], which name them alike).
// By position, every statement selecting `RECORD_COLUMNS`: looking each
// column up by name cost about a sixth of the decoding in a PostgreSQL
// export (`kakehashi-bench national`).
macro_rules! by_position {
    ($record:ident, $row:ident . $get:ident) => {
        $record {
            seq: $row.$get(0)?,
            recorded_at: $row.$get(1)?,
            query_id: $row.$get(2)?,
            permit_id: $row.$get(3)?,
            flow_id: $row.$get(4)?,
            flow_list_version: $row.$get(5)?,
            procedure_code: $row.$get(6)?,
            requester: $row.$get(7)?,
            provider: $row.$get(8)?,
            items: $row.$get(9)?,
            requester_code: $row.$get(10)?,
            requester_salt: $row.$get(11)?,
            provider_code: $row.$get(12)?,
            provider_salt: $row.$get(13)?,
            outcome: $row.$get(14)?,
            reason: $row.$get(15)?,
            approver: $row.$get(16)?,
            detail: $row.$get(17)?,
            hash: $row.$get(18)?,
        }
    };
}

macro_rules! record_row_by_position {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for RecordRow {
            fn from_row(r: &'r $row) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(by_position!(RecordRow, r.try_get))
            }
        }
    };
}
record_row_by_position!(PgRow);
record_row_by_position!(sqlx::sqlite::SqliteRow);

/// A stored record as a long read hands it on: decoded, or (PostgreSQL)
/// still the row as it came off the wire, whose columns are read in place
/// by [`StoredRecord::view`]. An export writes most rows from that view:
/// decoding every column into a `String` of its own was a third of the
/// broker's time in a PostgreSQL export (`perf` of `kakehashi-broker
/// records export`).
// On SQLite every row is decoded: boxing it would allocate once per row.
#[allow(clippy::large_enum_variant)]
pub(crate) enum StoredRecord {
    /// Decoded.
    Decoded(RecordRow),
    /// A PostgreSQL row whose column types were checked: the first row of
    /// its statement was decoded with checks, and every row of one result
    /// has the same columns.
    Wire(PgRow),
}

impl StoredRecord {
    /// Its sequence number.
    pub fn seq(&self) -> Result<i64, BrokerError> {
        match self {
            StoredRecord::Decoded(r) => Ok(r.seq),
            StoredRecord::Wire(r) => Ok(sqlx::Row::try_get_unchecked(r, 0)?),
        }
    }

    /// Its columns, borrowed.
    pub fn view(&self) -> Result<RecordView<'_>, BrokerError> {
        match self {
            StoredRecord::Decoded(r) => Ok(r.view()),
            StoredRecord::Wire(r) => {
                use sqlx::Row;
                Ok(by_position!(RecordView, r.try_get_unchecked))
            }
        }
    }

    /// The decoded row.
    pub fn into_row(self) -> Result<RecordRow, BrokerError> {
        match self {
            StoredRecord::Decoded(r) => Ok(r),
            StoredRecord::Wire(r) => Ok(sqlx::FromRow::from_row(&r)?),
        }
    }
}
/// Records `lo..=hi` in sequence order.
pub(crate) enum RecordSource {
    /// Chunks read on the caller's snapshot.
    Cursor(Cursor<RecordRow>),
    /// A SQLite file read ahead on a thread of its own.
    Direct(DirectRecords),
    /// PostgreSQL slices in the caller's snapshot.
    Postgres(PgRecords),
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
        self.next_stored(snap)
            .await?
            .map(StoredRecord::into_row)
            .transpose()
    }

    /// The next record as read, or `None` after the last.
    pub async fn next_stored(
        &mut self,
        snap: &mut Snapshot,
    ) -> Result<Option<StoredRecord>, BrokerError> {
        Ok(match self {
            RecordSource::Cursor(c) => c.next(snap).await?.map(StoredRecord::Decoded),
            RecordSource::Direct(d) => d.next().await?.map(StoredRecord::Decoded),
            RecordSource::Postgres(p) => p.next(snap).await?.map(StoredRecord::Wire),
        })
    }
}

/// What [`read_in_order`] hands on: the records in sequence order, each
/// followed by the stored checkpoints at or before it.
// Nearly every item is a record: boxing it would allocate once per row.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sourced {
    /// A record.
    Record(StoredRecord),
    /// A stored checkpoint.
    Checkpoint(CheckpointRow),
}

/// Items gathered into chunks of [`SOURCED_CHUNK`], each handed on once full.
pub(crate) struct Chunks<'a> {
    out: &'a mpsc::Sender<Result<Vec<Sourced>, BrokerError>>,
    chunk: Vec<Sourced>,
}

impl<'a> Chunks<'a> {
    pub(crate) fn new(out: &'a mpsc::Sender<Result<Vec<Sourced>, BrokerError>>) -> Self {
        Self {
            out,
            chunk: Vec::with_capacity(SOURCED_CHUNK),
        }
    }

    pub(crate) fn push(&mut self, item: Sourced) {
        self.chunk.push(item);
    }

    /// Hands the chunk on if it is full; `false` once nobody listens.
    pub(crate) async fn hand_on_if_full(&mut self) -> bool {
        if self.chunk.len() < SOURCED_CHUNK {
            return true;
        }
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(SOURCED_CHUNK));
        self.out.send(Ok(full)).await.is_ok()
    }

    /// Hands on what is left.
    pub(crate) async fn finish(self) {
        if !self.chunk.is_empty() {
            let _ = self.out.send(Ok(self.chunk)).await;
        }
    }
}

/// Prepares the snapshot for a long read (on PostgreSQL, its statement's
/// plan), so that the work can overlap other preparations of the caller's.
pub(crate) async fn prepare_read(snap: &mut Snapshot) -> Result<(), BrokerError> {
    match snap {
        Snapshot::Postgres(tx) => super::postgres::record_source::prepare(tx).await,
        _ => Ok(()),
    }
}

/// Items handed on at a time.
pub(crate) const SOURCED_CHUNK: usize = 1024;

/// Reads records `lo..=hi` of the snapshot (whose purge point is
/// `cut_seq`) and the checkpoints among them, in order, into `tx` in chunks
/// of [`SOURCED_CHUNK`], until the end, an error (sent on) or the receiver
/// is dropped. Made to run on a task of its own, beside the one that
/// consumes the chunks.
pub(crate) async fn read_in_order(
    pools: &Pools,
    snap: &mut Snapshot,
    lo: i64,
    hi: i64,
    cut_seq: u64,
    tx: mpsc::Sender<Result<Vec<Sourced>, BrokerError>>,
) {
    let read = async {
        if let Snapshot::Postgres(pg) = snap {
            return super::postgres::record_source::read_slices(pg, lo, hi, &tx).await;
        }
        let mut records = RecordSource::open(pools, lo, hi, cut_seq);
        let mut checkpoints = Cursor::<CheckpointRow>::new(lo, hi);
        let mut pending = checkpoints.next(snap).await?;
        let mut chunks = Chunks::new(&tx);
        while let Some(row) = records.next_stored(snap).await? {
            let seq = row.seq()?;
            chunks.push(Sourced::Record(row));
            while let Some(cp) = pending.take_if(|cp| cp.seq <= seq) {
                chunks.push(Sourced::Checkpoint(cp));
                pending = checkpoints.next(snap).await?;
            }
            if !chunks.hand_on_if_full().await {
                return Ok(());
            }
        }
        chunks.finish().await;
        Ok::<(), BrokerError>(())
    };
    if let Err(e) = read.await {
        let _ = tx.send(Err(e)).await;
    }
}
