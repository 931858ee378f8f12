//! SQL for provision records: rows, streams, the head row, partitions.

use kakehashi_interfaces::audit::{self, Checkpoint, Hash, Items, Outcome, RecordFields, SALT_LEN};
use sqlx::FromRow;

use crate::error::BrokerError;
use crate::store::{Pools, Snapshot};

/// The columns of a stored record, in [`RecordRow`]'s order, as one literal:
/// every statement that reads or inserts a whole record names them through
/// it, since rows are decoded and bound by position.
macro_rules! record_columns {
    () => {
        "seq, recorded_at, query_id, permit_id, flow_id, flow_list_version, \
         procedure_code, requester, provider, items, requester_code, requester_salt, \
         provider_code, provider_salt, outcome, reason, approver, detail, hash"
    };
}
pub(crate) use record_columns;

/// Columns of [`RecordRow`], in order.
pub(crate) const RECORD_COLUMNS: &str = record_columns!();

/// The records past `$3` that concern a person: those where org `$1` is the
/// requester with code `$2` or the provider with code `$2` (R18). One text,
/// so PostgreSQL's disclosure pool plans the statement disclosures run
/// (`store/postgres/planned.rs`).
pub(crate) const PERSON_RECORDS: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE seq > $3 \
     AND ((requester = $1 AND requester_code = $2) OR (provider = $1 AND provider_code = $2)) \
     ORDER BY seq"
);

/// One stored record, decoded by position in [`RECORD_COLUMNS`]' order
/// (`store/record_source.rs`).
#[derive(Debug, Clone)]
pub(crate) struct RecordRow {
    pub seq: i64,
    pub recorded_at: String,
    pub query_id: String,
    pub permit_id: Option<String>,
    pub flow_id: Option<String>,
    pub flow_list_version: Option<i64>,
    pub procedure_code: Option<String>,
    pub requester: String,
    pub provider: Option<String>,
    pub items: String,
    pub requester_code: Option<String>,
    pub requester_salt: Option<Vec<u8>>,
    pub provider_code: Option<String>,
    pub provider_salt: Option<Vec<u8>>,
    pub outcome: String,
    pub reason: Option<String>,
    pub approver: Option<String>,
    pub detail: Option<String>,
    pub hash: Vec<u8>,
}

/// One stored record's columns, borrowed from wherever the row is held
/// (an export writes most rows straight from them, without an
/// [`audit::Record`] in between). Fields as in [`RecordRow`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordView<'a> {
    pub seq: i64,
    pub recorded_at: &'a str,
    pub query_id: &'a str,
    pub permit_id: Option<&'a str>,
    pub flow_id: Option<&'a str>,
    pub flow_list_version: Option<i64>,
    pub procedure_code: Option<&'a str>,
    pub requester: &'a str,
    pub provider: Option<&'a str>,
    pub items: &'a str,
    pub requester_code: Option<&'a str>,
    pub requester_salt: Option<&'a [u8]>,
    pub provider_code: Option<&'a str>,
    pub provider_salt: Option<&'a [u8]>,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub approver: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub hash: &'a [u8],
}

/// What a stored record without detail gives once its columns are checked
/// as [`RecordRow::into_record`] checks them: the values its hashed fields
/// need beside the borrowed columns.
#[derive(Debug)]
pub(crate) struct Checked {
    pub seq: u64,
    pub outcome: Outcome,
    pub flow_list_version: Option<u64>,
    pub requester_person: Option<Hash>,
    pub provider_person: Option<Hash>,
}

impl<'a> RecordView<'a> {
    /// The columns checked as [`RecordRow::into_record`] checks them, for a
    /// record without detail; `None` for one with detail (exports, purges,
    /// erasures), which is decoded whole instead.
    pub fn checked(&self) -> Result<Option<Checked>, String> {
        if self.detail.is_some() {
            return Ok(None);
        }
        let seq = u64::try_from(self.seq).map_err(|_| "negative sequence".to_string())?;
        let outcome = Outcome::from_parts(self.outcome, self.reason.map(str::to_string), None)?;
        let flow_list_version = self
            .flow_list_version
            .map(u64::try_from)
            .transpose()
            .map_err(|_| "negative flow-list version".to_string())?;
        let (requester_person, provider_person) = self.commitments()?;
        Ok(Some(Checked {
            seq,
            outcome,
            flow_list_version,
            requester_person,
            provider_person,
        }))
    }

    /// The record's hashed fields: these columns with what [`Self::checked`]
    /// gave for them.
    pub fn fields<'b>(&'b self, checked: &'b Checked) -> RecordFields<'b>
    where
        'a: 'b,
    {
        RecordFields {
            seq: checked.seq,
            at: self.recorded_at,
            query_id: self.query_id,
            permit_id: self.permit_id,
            flow_id: self.flow_id,
            flow_list_version: checked.flow_list_version,
            procedure: self.procedure_code,
            requester: self.requester,
            provider: self.provider,
            items: Items::Spaced(self.items),
            requester_person: checked.requester_person.as_ref(),
            provider_person: checked.provider_person.as_ref(),
            outcome: &checked.outcome,
            approver: self.approver,
        }
    }

    /// An owned copy of the columns, for a record decoded whole (one with
    /// detail, or a JSON Lines export's).
    pub fn to_row(self) -> RecordRow {
        let owned = |s: Option<&str>| s.map(str::to_string);
        RecordRow {
            seq: self.seq,
            recorded_at: self.recorded_at.to_string(),
            query_id: self.query_id.to_string(),
            permit_id: owned(self.permit_id),
            flow_id: owned(self.flow_id),
            flow_list_version: self.flow_list_version,
            procedure_code: owned(self.procedure_code),
            requester: self.requester.to_string(),
            provider: owned(self.provider),
            items: self.items.to_string(),
            requester_code: owned(self.requester_code),
            requester_salt: self.requester_salt.map(<[u8]>::to_vec),
            provider_code: owned(self.provider_code),
            provider_salt: self.provider_salt.map(<[u8]>::to_vec),
            outcome: self.outcome.to_string(),
            reason: owned(self.reason),
            approver: owned(self.approver),
            detail: owned(self.detail),
            hash: self.hash.to_vec(),
        }
    }

    /// The requester's and the provider's person-code commitments.
    pub fn commitments(&self) -> Result<(Option<Hash>, Option<Hash>), String> {
        Ok((
            commitment(self.requester_code, self.requester_salt)?,
            commitment(self.provider_code, self.provider_salt)?,
        ))
    }

    /// Whether the stored item list is as [`split_items`] and a join with
    /// single spaces would give it back.
    pub fn items_are_canonical(&self) -> bool {
        !self.items.starts_with(' ') && !self.items.ends_with(' ') && !self.items.contains("  ")
    }
}

fn commitment(code: Option<&str>, salt: Option<&[u8]>) -> Result<Option<Hash>, String> {
    match (code, salt) {
        (None, None) => Ok(None),
        (Some(code), Some(salt)) => {
            let salt: [u8; SALT_LEN] = salt
                .try_into()
                .map_err(|_| "person-code salt has the wrong length".to_string())?;
            Ok(Some(audit::person_commitment(&salt, code)))
        }
        _ => Err("person code and salt must be stored together".into()),
    }
}

/// Splits the stored item list.
pub(crate) fn split_items(items: &str) -> Vec<String> {
    items
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl RecordRow {
    /// The sequence number as u64 (stored rows are always ≥ 1).
    pub fn seq_u64(&self) -> u64 {
        u64::try_from(self.seq).unwrap_or(0)
    }

    /// The row's columns, borrowed.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            seq: self.seq,
            recorded_at: &self.recorded_at,
            query_id: &self.query_id,
            permit_id: self.permit_id.as_deref(),
            flow_id: self.flow_id.as_deref(),
            flow_list_version: self.flow_list_version,
            procedure_code: self.procedure_code.as_deref(),
            requester: &self.requester,
            provider: self.provider.as_deref(),
            items: &self.items,
            requester_code: self.requester_code.as_deref(),
            requester_salt: self.requester_salt.as_deref(),
            provider_code: self.provider_code.as_deref(),
            provider_salt: self.provider_salt.as_deref(),
            outcome: &self.outcome,
            reason: self.reason.as_deref(),
            approver: self.approver.as_deref(),
            detail: self.detail.as_deref(),
            hash: &self.hash,
        }
    }

    /// The hashed form of this row and its stored chain hash, moving the
    /// row's texts (an export or verification reads millions).
    pub fn into_record(self) -> Result<(audit::Record, Hash), String> {
        let seq = u64::try_from(self.seq).map_err(|_| "negative sequence".to_string())?;
        let (requester_person, provider_person) = self.view().commitments()?;
        let flow_list_version = self
            .flow_list_version
            .map(u64::try_from)
            .transpose()
            .map_err(|_| "negative flow-list version".to_string())?;
        let detail = self
            .detail
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| format!("detail: {e}"))?;
        let outcome = Outcome::from_parts(&self.outcome, self.reason, detail)?;
        let hash: Hash = self
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| "stored hash has the wrong length".to_string())?;

        Ok((
            audit::Record {
                seq,
                at: self.recorded_at,
                query_id: self.query_id,
                permit_id: self.permit_id,
                flow_id: self.flow_id,
                flow_list_version,
                procedure: self.procedure_code,
                requester: self.requester,
                provider: self.provider,
                items: split_items(&self.items),
                requester_person,
                provider_person,
                outcome,
                approver: self.approver,
            },
            hash,
        ))
    }
}

/// One stored checkpoint.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct CheckpointRow {
    pub seq: i64,
    pub head_hash: Vec<u8>,
    pub signed_at: String,
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
    pub tsa_token: Option<Vec<u8>>,
}

impl CheckpointRow {
    /// The checkpoint; a stored field of the wrong length becomes zeros, so
    /// verification reports a bad signature at its sequence.
    pub fn to_checkpoint(&self) -> Checkpoint {
        let mut head_hash = [0u8; 32];
        if self.head_hash.len() == 32 {
            head_hash.copy_from_slice(&self.head_hash);
        }
        let mut signature = [0u8; 64];
        if self.signature.len() == 64 {
            signature.copy_from_slice(&self.signature);
        }
        Checkpoint {
            seq: u64::try_from(self.seq).unwrap_or(0),
            head_hash,
            at: self.signed_at.clone(),
            key_id: self.key_id.clone(),
            signature,
            timestamp: self.tsa_token.clone(),
        }
    }
}

/// The head row.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: Hash,
    pub cut_seq: u64,
    pub cut_hash: Hash,
}

pub(crate) fn to_hash(bytes: &[u8], what: &str) -> Result<Hash, BrokerError> {
    bytes
        .try_into()
        .map_err(|_| BrokerError::Corrupt(format!("stored {what} is not 32 bytes")))
}

/// Reads the head row.
pub(crate) async fn read_head(pools: &Pools) -> Result<Head, BrokerError> {
    let (seq, hash, cut_seq, cut_hash): (i64, Vec<u8>, i64, Vec<u8>) =
        crate::on_pool!(pools, read, |pool| {
            sqlx::query_as("SELECT seq, hash, cut_seq, cut_hash FROM records_head WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
    Ok(Head {
        seq: u64::try_from(seq).unwrap_or(0),
        hash: to_hash(&hash, "head hash")?,
        cut_seq: u64::try_from(cut_seq).unwrap_or(0),
        cut_hash: to_hash(&cut_hash, "cut hash")?,
    })
}

/// The checkpoint with the highest sequence, if any.
pub(crate) async fn latest_checkpoint(pools: &Pools) -> Result<Option<CheckpointRow>, BrokerError> {
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_as::<_, CheckpointRow>(
            "SELECT seq, head_hash, signed_at, key_id, public_key, signature, tsa_token
             FROM record_checkpoints ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
    }))
}

/// The stored checkpoint at `seq`, if any.
pub(crate) async fn checkpoint_at(
    pools: &Pools,
    seq: u64,
) -> Result<Option<CheckpointRow>, BrokerError> {
    let seq = to_i64(seq);
    Ok(crate::on_pool!(pools, read, |pool| {
        sqlx::query_as::<_, CheckpointRow>(
            "SELECT seq, head_hash, signed_at, key_id, public_key, signature, tsa_token
             FROM record_checkpoints WHERE seq = $1 LIMIT 1",
        )
        .bind(seq)
        .fetch_optional(pool)
        .await?
    }))
}

/// Stores a checkpoint (another node may have sealed the same sequence: keep the first).
pub(crate) async fn insert_checkpoint(
    pools: &Pools,
    cp: &Checkpoint,
    public_key: &[u8],
) -> Result<(), BrokerError> {
    let seq = i64::try_from(cp.seq).unwrap_or(i64::MAX);
    crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "INSERT INTO record_checkpoints
                 (seq, head_hash, signed_at, key_id, public_key, signature, tsa_token)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(seq)
        .bind(cp.head_hash.to_vec())
        .bind(&cp.at)
        .bind(&cp.key_id)
        .bind(public_key.to_vec())
        .bind(cp.signature.to_vec())
        .bind(cp.timestamp.clone())
        .execute(pool)
        .await?;
    });
    Ok(())
}

const SELECT_RANGE: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3"
);

const SELECT_CHECKPOINTS: &str =
    "SELECT seq, head_hash, signed_at, key_id, public_key, signature, tsa_token \
     FROM record_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3";

impl Snapshot {
    pub async fn head(&mut self) -> Result<Head, BrokerError> {
        const SQL: &str = "SELECT seq, hash, cut_seq, cut_hash FROM records_head WHERE id = 1";
        let (seq, hash, cut_seq, cut_hash): (i64, Vec<u8>, i64, Vec<u8>) =
            crate::on_snapshot!(self, |tx| sqlx::query_as(SQL).fetch_one(&mut **tx).await?);
        Ok(Head {
            seq: u64::try_from(seq).unwrap_or(0),
            hash: to_hash(&hash, "head hash")?,
            cut_seq: u64::try_from(cut_seq).unwrap_or(0),
            cut_hash: to_hash(&cut_hash, "cut hash")?,
        })
    }

    pub async fn stored_hash(&mut self, seq: u64) -> Result<Option<Hash>, BrokerError> {
        const SQL: &str = "SELECT hash FROM records WHERE seq = $1";
        let seq = to_i64(seq);
        let row: Option<Vec<u8>> = crate::on_snapshot!(self, |tx| {
            sqlx::query_scalar(SQL)
                .bind(seq)
                .fetch_optional(&mut **tx)
                .await?
        });
        row.map(|h| to_hash(&h, "record hash")).transpose()
    }
}

/// `(seq, hash)` pairs of a list of sequence numbers (at most a few hundred).
const SELECT_HASHES_IN: &str = "SELECT seq, hash FROM records WHERE seq IN";
const SELECT_CHECKPOINT_HASHES_IN: &str =
    "SELECT seq, head_hash FROM record_checkpoints WHERE seq IN";

impl Snapshot {
    async fn pairs(
        &mut self,
        select: &str,
        seqs: &[u64],
    ) -> Result<Vec<(i64, Vec<u8>)>, BrokerError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        // Integers only: the list is built, not bound.
        let list = seqs
            .iter()
            .map(|s| to_i64(*s).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("{select} ({list})");
        Ok(crate::on_snapshot!(self, |tx| sqlx::query_as(&sql)
            .fetch_all(&mut **tx)
            .await?))
    }

    /// Stored chain hashes of these records (absent ones are left out).
    pub async fn stored_hashes(
        &mut self,
        seqs: &[u64],
    ) -> Result<Vec<(i64, Vec<u8>)>, BrokerError> {
        self.pairs(SELECT_HASHES_IN, seqs).await
    }

    /// Head hashes of the stored checkpoints at these sequences.
    pub async fn checkpoint_hashes(
        &mut self,
        seqs: &[u64],
    ) -> Result<Vec<(i64, Vec<u8>)>, BrokerError> {
        self.pairs(SELECT_CHECKPOINT_HASHES_IN, seqs).await
    }

    /// The first record in `(after, upto]` recorded before `at` (fixed-width
    /// text compares as time): an unsealed record that should have been sealed.
    pub async fn first_seq_before(
        &mut self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<(u64, String)>, BrokerError> {
        const SQL: &str = "SELECT seq, recorded_at FROM records \
             WHERE seq > $2 AND seq <= $3 AND recorded_at < $1 ORDER BY seq LIMIT 1";
        let (after, upto) = (to_i64(after), to_i64(upto));
        let row: Option<(i64, String)> = crate::on_snapshot!(self, |tx| {
            sqlx::query_as(SQL)
                .bind(at)
                .bind(after)
                .bind(upto)
                .fetch_optional(&mut **tx)
                .await?
        });
        Ok(row.map(|(seq, at)| (u64::try_from(seq).unwrap_or(0), at)))
    }

    /// The highest stored checkpoint before `seq` (0 when none).
    pub async fn last_checkpoint_before(&mut self, seq: u64) -> Result<u64, BrokerError> {
        const SQL: &str = "SELECT MAX(seq) FROM record_checkpoints WHERE seq < $1";
        let seq = to_i64(seq);
        let max: Option<i64> = crate::on_snapshot!(self, |tx| {
            sqlx::query_scalar(SQL)
                .bind(seq)
                .fetch_one(&mut **tx)
                .await?
        });
        Ok(max.and_then(|m| u64::try_from(m).ok()).unwrap_or(0))
    }

    /// Whether any checkpoint is stored.
    pub async fn any_checkpoint(&mut self) -> Result<bool, BrokerError> {
        const SQL: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM record_checkpoints LIMIT 1) AS c";
        let n: i64 = crate::on_snapshot!(self, |tx| sqlx::query_scalar(SQL)
            .fetch_one(&mut **tx)
            .await?);
        Ok(n > 0)
    }
}

/// Rows fetched in sequence order by a [`Cursor`].
pub(crate) trait Keyed: Sized + Send + Unpin + crate::store::FromBackendRow {
    /// `SELECT … WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3`.
    const SELECT: &'static str;

    fn key(&self) -> i64;

    async fn fetch(
        snap: &mut Snapshot,
        lo: i64,
        hi: i64,
        limit: i64,
    ) -> Result<Vec<Self>, BrokerError> {
        Ok(crate::on_snapshot!(snap, |tx| {
            sqlx::query_as(Self::SELECT)
                .bind(lo)
                .bind(hi)
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?
        }))
    }
}

impl Keyed for RecordRow {
    const SELECT: &'static str = SELECT_RANGE;
    fn key(&self) -> i64 {
        self.seq
    }
}

impl Keyed for CheckpointRow {
    const SELECT: &'static str = SELECT_CHECKPOINTS;
    fn key(&self) -> i64 {
        self.seq
    }
}

/// Rows with `lo <= seq <= hi` in sequence order, fetched in chunks (keyset
/// pagination): constant memory, and much faster than sqlx's row-by-row
/// SQLite stream.
pub(crate) struct Cursor<T> {
    next: i64,
    hi: i64,
    buf: std::vec::IntoIter<T>,
    done: bool,
}

const CHUNK: i64 = 2048;

impl<T: Keyed> Cursor<T> {
    pub fn new(lo: i64, hi: i64) -> Self {
        Self {
            next: lo,
            hi,
            buf: Vec::new().into_iter(),
            done: lo > hi,
        }
    }

    pub async fn next(&mut self, snap: &mut Snapshot) -> Result<Option<T>, BrokerError> {
        loop {
            if let Some(row) = self.buf.next() {
                return Ok(Some(row));
            }
            if self.done {
                return Ok(None);
            }
            let mut rows = T::fetch(snap, self.next, self.hi, CHUNK).await?;
            match (rows.first().map(T::key), rows.last().map(T::key)) {
                (Some(first), Some(last)) if rows.len() as i64 >= CHUNK => {
                    if first == last {
                        self.next = last.saturating_add(1);
                    } else {
                        // Rows sharing the last sequence (only tampering makes
                        // duplicates) go together into the next chunk, so
                        // none is skipped.
                        rows.retain(|r| r.key() != last);
                        self.next = last;
                    }
                }
                _ => self.done = true,
            }
            self.buf = rows.into_iter();
        }
    }
}

/// The first checkpoint at or after `seq`.
pub(crate) async fn first_checkpoint_from(
    pools: &Pools,
    seq: u64,
) -> Result<Option<u64>, BrokerError> {
    let seq = to_i64(seq);
    let row: (Option<i64>,) = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT MIN(seq) FROM record_checkpoints WHERE seq >= $1")
            .bind(seq)
            .fetch_one(pool)
            .await?
    });
    Ok(row.0.and_then(|s| u64::try_from(s).ok()))
}

/// Sequence numbers never exceed i64::MAX (they are counted from 1).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `yyyymm` of a UTC instant: the month a record belongs to (PostgreSQL's
/// partition key).
pub(crate) fn month_key(at: time::OffsetDateTime) -> i32 {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.year() * 100 + i32::from(u8::from(at.month()))
}
