//! The record log's side of the storage boundary.
//!
//! [`crate::records`] keeps what is the same on every backend: batching,
//! chain hashing, checkpoints, search planning, export, verification. What a
//! backend does its own way is here, as traits each backend implements in
//! its folder (`sqlite/records.rs`, `postgres/records.rs`):
//!
//! - [`Committer`]: how the records writer commits a batch (SQLite through
//!   the writer's own connection; PostgreSQL as one statement, with month
//!   partitions created ahead and dropped by a purge);
//! - [`crate::store::Backend`]: the statements whose text differs (a time
//!   found in the sequence, a search's index hints and partition bounds, a
//!   plan).
//!
//! A third backend implements both and adds its arm to
//! [`crate::store::Pools`]. The statement text both backends share is the
//! two macros below, expanded by each backend with its own types.

pub(crate) mod rows;
pub(crate) mod table;

use async_trait::async_trait;
use kakehashi_interfaces::audit::Hash;

use crate::error::BrokerError;
use crate::store::records::rows::{NewRow, Prepared, PreparedRow, PurgePlan};

/// How one backend commits provision records for the records writer
/// ([`crate::records::writer`] decides which path a batch takes).
#[async_trait]
pub(crate) trait Committer: Send {
    /// Makes ready to store `rows` (PostgreSQL: their month partitions).
    async fn make_room(&mut self, rows: &[&NewRow]) -> Result<(), BrokerError>;

    /// Whether [`Committer::commit_at`] can run.
    fn has_fast_path(&self) -> bool;

    /// The common commit: `rows` (numbered and hashed after `old`) go in
    /// only if the stored head is still `old` and, with `generation`, the
    /// lookup generation is still that one — checked inside the commit.
    async fn commit_at(
        &mut self,
        rows: &[PreparedRow<'_>],
        old: (u64, &Hash),
        generation: Option<crate::store::lookup_generation::LookupStamp>,
    ) -> Result<(), AtFailure>;

    /// Locks and reads the head and the lookup generation inside a
    /// transaction, applies `purge`, then numbers and hash-links after the
    /// head, with `chain`, the `rows` whose answers still hold under that
    /// generation, and appends them.
    async fn commit_locked<'a>(
        &mut self,
        rows: &[&'a NewRow],
        purge: Option<&PurgePlan>,
        chain: Chain,
    ) -> Result<Prepared<'a>, BrokerError>;
}

/// Numbers and hash-links rows after a head, leaving out those whose
/// answers were read under another lookup generation than the one given:
/// the records' chain (`records::writer::prepare_kept`), handed to the
/// backend, which learns the head and the generation only inside its
/// transaction.
pub(crate) type Chain = for<'b> fn(&[&'b NewRow], (u64, Hash), i64) -> Prepared<'b>;

/// Why the common commit did not happen.
pub(crate) enum AtFailure {
    /// Refused as a whole, nothing written: retry under the head lock.
    Refused(String),
    /// The database could not be reached.
    Failed(BrokerError),
}

impl From<sqlx::Error> for AtFailure {
    fn from(e: sqlx::Error) -> AtFailure {
        match e {
            sqlx::Error::Database(e) => AtFailure::Refused(e.to_string()),
            e => AtFailure::Failed(e.into()),
        }
    }
}

pub(crate) const LOCK_HEAD: &str =
    "UPDATE records_head SET seq = seq WHERE id = 1 RETURNING seq, hash, cut_seq";

/// Rows per multi-row INSERT: 20 columns × 400 rows stays well under
/// SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 400;

pub(crate) const INSERT_HEAD_SQLITE: &str = concat!(
    "INSERT INTO records (",
    crate::store::records::table::record_columns!(),
    ") "
);

/// PostgreSQL adds the month partition's key.
pub(crate) const INSERT_HEAD_PG: &str = concat!(
    "INSERT INTO records (",
    crate::store::records::table::record_columns!(),
    ", part_month) "
);

// One statement (SQLite, on the locked path: one multi-statement string,
// since sqlx binds `?` across statements in order; PostgreSQL: data-modifying
// CTEs) that inserts a chunk of records and their results and moves the head
// from `$old` to the chunk's last record. The head moves only if it still is `$old`: otherwise
// `seq` becomes NULL and the NOT NULL constraint fails the whole statement,
// so a stale head can never fork the chain.
macro_rules! chunk_statement {
    ($db:ty, $insert_head:expr, $pg:expr, $chunk:expr, $old:expr, $generation:expr) => {{
        let (old_seq, old_hash): (u64, &kakehashi_interfaces::audit::Hash) = $old;
        let (last_seq, last_hash) = match $chunk.last() {
            Some((_, seq, hash, ..)) => (*seq, hash),
            None => (old_seq, old_hash),
        };
        let mut batch = sqlx::QueryBuilder::<$db>::new(if $pg { "WITH r AS (" } else { "" });
        batch.push($insert_head);
        batch.push_values(
            $chunk,
            |mut b, (row, seq, hash, outcome, reason, detail)| {
                let d = &row.draft;
                // Borrowed binds: the rows outlive the statement, so the
                // hot path copies no strings into the arguments.
                b.push_bind($crate::store::records::table::to_i64(*seq))
                    .push_bind(row.at.as_str())
                    .push_bind(d.query_id.as_str())
                    .push_bind(d.permit_id.as_deref())
                    .push_bind(d.flow_id.as_deref())
                    .push_bind(
                        d.flow_list_version
                            .map($crate::store::records::table::to_i64),
                    )
                    .push_bind(d.procedure.as_deref())
                    .push_bind(d.requester.as_str())
                    .push_bind(d.provider.as_ref().map(|p| p.as_str()))
                    .push_bind(d.items.join(" "))
                    .push_bind(d.requester_person_code.as_deref())
                    .push_bind(row.requester_salt.as_ref().map(|s| &s[..]))
                    .push_bind(d.provider_person_code.as_deref())
                    .push_bind(row.provider_salt.as_ref().map(|s| &s[..]))
                    .push_bind(*outcome)
                    .push_bind(reason.as_deref())
                    .push_bind(d.approver.as_deref())
                    .push_bind(detail.as_deref())
                    .push_bind(&hash[..]);
                if $pg {
                    b.push_bind(row.part_month);
                }
            },
        );
        let results: Vec<&$crate::store::records::rows::OwnedResult> = $chunk
            .iter()
            .filter_map(|(row, ..)| row.result.as_ref())
            .collect();
        if !results.is_empty() {
            batch.push(if $pg { "), q AS (" } else { "; " });
            batch.push($crate::store::records::rows::QUERY_INSERT_HEAD);
            batch.push_values(results, |mut b, r| {
                b.push_bind(r.id.as_str())
                    .push_bind(r.requester.as_str())
                    .push_bind(r.provider.as_str())
                    .push_bind(r.status.as_str())
                    .push_bind(r.permit.as_str())
                    .push_bind(r.envelope.as_deref())
                    .push_bind(r.pending_cipher.as_deref())
                    .push_bind(r.created_at.as_str())
                    .push_bind(r.expires_at.as_str());
            });
        }
        batch.push(if $pg { ") " } else { "; " });
        batch.push("UPDATE records_head SET seq = CASE WHEN seq = ");
        batch.push_bind($crate::store::records::table::to_i64(old_seq));
        batch.push(" AND hash = ");
        batch.push_bind(&old_hash[..]);
        if let Some(stamp) = $generation {
            let generation: i64 = $crate::store::lookup_generation::LookupStamp::generation(stamp);
            // Answers read from memory hold only while the lookup
            // generation does: checked by the statement that commits them.
            batch.push(" AND (SELECT n FROM lookup_generation WHERE id = 1) = ");
            batch.push_bind(generation);
        }
        batch.push(" THEN ");
        batch.push_bind($crate::store::records::table::to_i64(last_seq));
        batch.push(" END, hash = ");
        batch.push_bind(&last_hash[..]);
        batch.push(" WHERE id = 1");
        batch
    }};
}
pub(crate) use chunk_statement;

// The locked path after the head lock, expanded once per backend so each
// gets its own connection types: `$conn` is inside a transaction that holds
// the head row's lock, and `$locked` is what the lock read (head sequence
// and hash, the purge cut, the lookup generation). Applies the purge, then
// numbers and appends the rows. `$pg` adds the partition column, and
// `$drop_partitions` drops the month partitions a purge empties (PostgreSQL)
// or nothing (SQLite). The caller commits.
macro_rules! append_locked {
    ($conn:expr, $db:ty, $insert_head:expr, $pg:expr, $rows:expr, $purge:expr, $chain:expr, $drop_partitions:path, $locked:expr) => {{
        let (head_seq, head_hash, cut_seq, generation): (i64, Vec<u8>, i64, i64) = $locked;
        match $purge.map(|plan| &plan.deletes) {
            None => {}
            Some($crate::store::records::rows::Deletes::PersonalData { cutoffs, counts }) => {
                let erased = $crate::store::erasure::erase_in_tx!($conn, cutoffs);
                if erased != *counts {
                    return Err($crate::error::BrokerError::refused(
                        kakehashi_interfaces::ErrorCode::Unavailable,
                        "the data due for erasure changed while it was counted; run the erasure again",
                    ));
                }
            }
            Some($crate::store::records::rows::Deletes::ExpiredQueries { ids, cut, tombstone_until }) => {
                let mut update = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE queries SET status = 'expired', envelope = NULL, pending_cipher = NULL, \
                     reason = NULL, expires_at = ",
                );
                update.push_bind(tombstone_until.as_str());
                update.push(" WHERE expires_at <= ");
                update.push_bind(cut.as_str());
                update.push(" AND status IN ('pending', 'deciding') AND id IN (");
                let mut list = update.separated(", ");
                for id in ids {
                    list.push_bind(id.as_str());
                }
                update.push(")");
                let tombstoned = update.build().execute($conn).await?.rows_affected();
                if usize::try_from(tombstoned).ok() != Some(ids.len()) {
                    return Err($crate::error::BrokerError::refused(
                        kakehashi_interfaces::ErrorCode::Unavailable,
                        "the expired queries changed while they were swept (decided, or swept by another node); sweep again",
                    ));
                }
            }
            Some($crate::store::records::rows::Deletes::Records { expected_cut, cut_seq: plan_cut, cut_hash }) => {
                if u64::try_from(cut_seq).ok() != Some(*expected_cut) {
                    return Err($crate::error::BrokerError::refused(
                        kakehashi_interfaces::ErrorCode::Unavailable,
                        "another purge ran meanwhile; run the purge again",
                    ));
                }
                let cut = $crate::store::records::table::to_i64(*plan_cut);
                $drop_partitions($conn, cut).await?;
                sqlx::query("DELETE FROM records WHERE seq <= $1")
                    .bind(cut)
                    .execute($conn)
                    .await?;
                sqlx::query("DELETE FROM record_checkpoints WHERE seq <= $1")
                    .bind(cut)
                    .execute($conn)
                    .await?;
                sqlx::query("UPDATE records_head SET cut_seq = $1, cut_hash = $2 WHERE id = 1")
                    .bind(cut)
                    .bind(cut_hash.to_vec())
                    .execute($conn)
                    .await?;
            }
        }
        let head = (
            u64::try_from(head_seq).unwrap_or(0),
            $crate::store::records::table::to_hash(&head_hash, "head hash")?,
        );
        let prepared = ($chain)($rows, head, generation);
        // One round trip per chunk, since each is a hand-off to the database.
        let mut old = head;
        for chunk in prepared.rows.chunks($crate::store::records::ROWS_PER_STATEMENT) {
            $crate::store::records::chunk_statement!($db, $insert_head, $pg, chunk, (old.0, &old.1), None::<$crate::store::lookup_generation::LookupStamp>)
                .build()
                .execute($conn)
                .await?;
            if let Some((_, seq, hash, ..)) = chunk.last() {
                old = (*seq, *hash);
            }
        }
        prepared
    }};
}
pub(crate) use append_locked;
