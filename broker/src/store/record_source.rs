//! Long reads of records in sequence order (export, verification, the
//! witness endpoint): [`RecordSource`]. On PostgreSQL the rows come through
//! a server-side cursor in the caller's snapshot
//! ([`postgres::record_source`](super::postgres::record_source)); on a
//! SQLite file they are read on a connection and thread of their own
//! ([`sqlite::record_source`](super::sqlite::record_source)); on a SQLite
//! store without a file, through a [`Cursor`] on the snapshot.

use super::postgres::record_source::PgRecords;
use super::sqlite::record_source::DirectRecords;
use crate::error::BrokerError;
use crate::store::records::table::{Cursor, RecordRow};
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
/// Records `lo..=hi` in sequence order.
pub(crate) enum RecordSource {
    /// Chunks read on the caller's snapshot.
    Cursor(Cursor<RecordRow>),
    /// A SQLite file read ahead on a thread of its own.
    Direct(DirectRecords),
    /// A PostgreSQL cursor in the caller's snapshot.
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
        match self {
            RecordSource::Cursor(c) => c.next(snap).await,
            RecordSource::Direct(d) => d.next().await,
            RecordSource::Postgres(p) => p.next(snap).await,
        }
    }
}
