//! Long reads of PostgreSQL's records in sequence order, in the caller's
//! snapshot: [`PgRecords`] row by row (verification, the witness
//! endpoint) and [`read_slices`] streaming to another task (export).
//!
//! Both read a slice of [`SLICE`] sequence numbers per statement, well
//! within the statement timeout. The statement is prepared once per
//! connection and always run with its generic plan: the month partitions
//! cannot be pruned by sequence, and planning over 88 of them anew for
//! each slice costs 50–150 ms. A server-side cursor avoids the planning
//! too, but the rows of each `FETCH` are first copied into a store on the
//! server and only then sent: that copy was a third of PostgreSQL's time
//! in an export (`perf` of `kakehashi-broker records export`), which ran
//! at ~250 000 rows/s through a cursor and ~450 000 through slices.

use std::collections::VecDeque;

use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::PgConnection;
use tokio::sync::mpsc;

use crate::error::BrokerError;
use crate::store::record_source::{Chunks, Sourced, StoredRecord};
use crate::store::records::table::{CheckpointRow, RecordRow};
use crate::store::Snapshot;

/// Sequence numbers a slice spans.
const SLICE: i64 = 16_384;

const SELECT_SLICE: &str = concat!(
    "SELECT ",
    crate::store::records::table::record_columns!(),
    " FROM records WHERE seq >= $1 AND seq <= $2 ORDER BY seq"
);

const SELECT_SLICE_CHECKPOINTS: &str =
    "SELECT seq, head_hash, signed_at, key_id, public_key, signature, tsa_token \
     FROM record_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq";

/// Once per transaction, before its first slice: the generic plan.
async fn use_generic_plan(tx: &mut PgConnection) -> Result<(), BrokerError> {
    sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
        .execute(tx)
        .await?;
    Ok(())
}

/// Plans the slice statements (their generic plans, cached with the
/// connection's prepared statements) by running them on an empty range.
/// On a connection of the long reads' pool (`planned.rs`) this is done as
/// it opens.
pub(crate) async fn plan(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(SELECT_SLICE)
        .bind(1_i64)
        .bind(0_i64)
        .execute(&mut *conn)
        .await?;
    sqlx::query(SELECT_SLICE_CHECKPOINTS)
        .bind(1_i64)
        .bind(0_i64)
        .execute(conn)
        .await?;
    Ok(())
}

/// Plans the slice statements in `tx`, if its connection has not: 33 ms
/// on a fresh connection over 89 months, which the caller may overlap with
/// other work.
pub(crate) async fn prepare(tx: &mut PgConnection) -> Result<(), BrokerError> {
    use_generic_plan(tx).await?;
    plan(tx).await?;
    Ok(())
}

/// The slices of `lo..=hi` in order, each as its first and last sequence.
struct Slices {
    from: Option<i64>,
    hi: i64,
}

fn slices(lo: i64, hi: i64) -> Slices {
    Slices {
        from: Some(lo).filter(|lo| *lo <= hi),
        hi,
    }
}

impl Iterator for Slices {
    type Item = (i64, i64);
    fn next(&mut self) -> Option<(i64, i64)> {
        let start = self.from?;
        let end = start.saturating_add(SLICE - 1).min(self.hi);
        self.from = end.checked_add(1).filter(|next| *next <= self.hi);
        Some((start, end))
    }
}

/// Type-checks the columns of a statement's rows by decoding its first
/// with checks (every row of one result has the same columns), so the
/// rest may be read unchecked.
fn check_columns(first: &PgRow) -> Result<(), BrokerError> {
    <RecordRow as sqlx::FromRow<PgRow>>::from_row(first)?;
    Ok(())
}

/// Records `lo..=hi` read a slice at a time.
pub(crate) struct PgRecords {
    slices: Slices,
    started: bool,
    buf: std::vec::IntoIter<PgRow>,
}

impl PgRecords {
    pub(crate) fn new(lo: i64, hi: i64) -> Self {
        Self {
            slices: slices(lo, hi),
            started: false,
            buf: Vec::new().into_iter(),
        }
    }

    /// The next row, its column types checked.
    pub(crate) async fn next(&mut self, snap: &mut Snapshot) -> Result<Option<PgRow>, BrokerError> {
        loop {
            if let Some(r) = self.buf.next() {
                return Ok(Some(r));
            }
            let Some((from, to)) = self.slices.next() else {
                return Ok(None);
            };
            let Snapshot::Postgres(tx) = snap else {
                return Err(BrokerError::Internal(
                    "a PostgreSQL read on a SQLite snapshot".into(),
                ));
            };
            if !self.started {
                use_generic_plan(tx).await?;
                self.started = true;
            }
            let rows = sqlx::query(SELECT_SLICE)
                .bind(from)
                .bind(to)
                .fetch_all(&mut **tx)
                .await?;
            if let Some(first) = rows.first() {
                check_columns(first)?;
            }
            self.buf = rows.into_iter();
        }
    }
}

/// Reads records `lo..=hi` and the checkpoints among them in order into
/// `out` ([`read_in_order`](crate::store::record_source::read_in_order) on
/// PostgreSQL): the rows of each slice go on in chunks as they arrive,
/// while the next are still being read.
pub(crate) async fn read_slices(
    tx: &mut PgConnection,
    lo: i64,
    hi: i64,
    out: &mpsc::Sender<Result<Vec<Sourced>, BrokerError>>,
) -> Result<(), BrokerError> {
    use_generic_plan(tx).await?;
    let mut pending: VecDeque<CheckpointRow> = VecDeque::new();
    let mut chunks = Chunks::new(out);
    for (from, to) in slices(lo, hi) {
        let checkpoints: Vec<CheckpointRow> = sqlx::query_as(SELECT_SLICE_CHECKPOINTS)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?;
        pending.extend(checkpoints);
        let mut rows = sqlx::query(SELECT_SLICE)
            .bind(from)
            .bind(to)
            .fetch(&mut *tx);
        let mut checked = false;
        while let Some(row) = rows.try_next().await? {
            if !checked {
                check_columns(&row)?;
                checked = true;
            }
            let record = StoredRecord::Wire(row);
            let seq = record.seq()?;
            chunks.push(Sourced::Record(record));
            while let Some(cp) = pending.pop_front() {
                if cp.seq > seq {
                    pending.push_front(cp);
                    break;
                }
                chunks.push(Sourced::Checkpoint(cp));
            }
            if !chunks.hand_on_if_full().await {
                return Ok(());
            }
        }
    }
    chunks.finish().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{slices, SLICE};

    #[test]
    fn slices_cover_the_range_once_in_order() {
        let all: Vec<_> = slices(1, 2 * SLICE + 5).collect();
        assert_eq!(
            all,
            vec![
                (1, SLICE),
                (SLICE + 1, 2 * SLICE),
                (2 * SLICE + 1, 2 * SLICE + 5)
            ]
        );
        assert_eq!(slices(7, 7).collect::<Vec<_>>(), vec![(7, 7)]);
        assert_eq!(slices(8, 7).count(), 0);
        assert_eq!(
            slices(i64::MAX - 1, i64::MAX).collect::<Vec<_>>(),
            vec![(i64::MAX - 1, i64::MAX)]
        );
    }
}
