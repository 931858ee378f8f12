//! SQL for the operation log (migrations `0103_operation_log.sql`): the
//! locked append, checkpoints, search, and one-snapshot reads for
//! verification. Statement text is shared by both backends (`$N`
//! placeholders); [`crate::on_pool!`] expands each body once per backend.

use ed25519_dalek::SigningKey;
use kakehashi_interfaces::audit::Hash;
use sqlx::FromRow;

use super::chain::{chain_hash, EntrySeal, OpCheckpoint};
use super::entry::{OpEntry, OpRecord, OpResult};
use super::{OpFilter, OpResultFilter};
use crate::error::BrokerError;
use crate::store::{Pools, Snapshot};

/// Takes the head row's lock: the first statement of every writing
/// transaction is this write, so on SQLite the transaction holds the write
/// lock from the start (no read-to-write upgrade across processes) and on
/// PostgreSQL the row lock orders writers on every node.
const LOCK_HEAD: &str = "UPDATE operation_log_head SET seq = seq WHERE id = 1 RETURNING seq, hash";

const ENTRY_COLUMNS: &str = "seq, logged_at, actor, org, action, target, result, result_code, \
     source, detail, hash, key_id, signature";

const CHECKPOINT_COLUMNS: &str = "seq, head_hash, prev_seq, signed_at, key_id, signature";

/// Sequence numbers never exceed i64::MAX (they count from 1).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_hash(bytes: &[u8], what: &str) -> Result<Hash, BrokerError> {
    bytes
        .try_into()
        .map_err(|_| BrokerError::Corrupt(format!("stored operation-log {what} is not 32 bytes")))
}

/// One stored entry.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct EntryRow {
    pub seq: i64,
    pub logged_at: String,
    pub actor: String,
    pub org: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub result: String,
    pub result_code: Option<String>,
    pub source: Option<String>,
    pub detail: Option<String>,
    pub hash: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl EntryRow {
    pub fn seq_u64(&self) -> u64 {
        to_u64(self.seq)
    }

    /// The entry as hashed and what is stored beside it; `Err` when a
    /// column cannot be read (which only tampering causes).
    pub fn decode(&self) -> Result<(OpRecord, EntrySeal), String> {
        let seq = u64::try_from(self.seq).map_err(|_| "negative sequence".to_string())?;
        let action = self
            .action
            .parse()
            .map_err(|_| "unknown action".to_string())?;
        let result = OpResult::from_parts(&self.result, self.result_code.as_deref())?;
        let hash: Hash = self
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| "hash is not 32 bytes".to_string())?;
        Ok((
            OpRecord {
                seq,
                at: self.logged_at.clone(),
                actor: self.actor.clone(),
                org: self.org.clone(),
                action,
                target: self.target.clone(),
                result,
                source: self.source.clone(),
                detail: self.detail.clone(),
            },
            EntrySeal {
                hash,
                key_id: self.key_id.clone(),
                signature: self.signature.clone(),
            },
        ))
    }
}

/// One stored checkpoint.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct CheckpointRow {
    pub seq: i64,
    pub head_hash: Vec<u8>,
    pub prev_seq: i64,
    pub signed_at: String,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl CheckpointRow {
    /// The checkpoint; a hash of the wrong length becomes zeros, so
    /// verification reports it at its sequence.
    pub fn to_checkpoint(&self) -> OpCheckpoint {
        let mut head_hash = [0u8; 32];
        if self.head_hash.len() == 32 {
            head_hash.copy_from_slice(&self.head_hash);
        }
        OpCheckpoint {
            seq: to_u64(self.seq),
            head_hash,
            prev_seq: to_u64(self.prev_seq),
            at: self.signed_at.clone(),
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// Appends one validated entry under the head lock, hashed onto the head
/// and signed, and moves the head: one transaction, committed (durable)
/// before this returns. Returns the entry's sequence number.
pub(crate) async fn append(
    pools: &Pools,
    entry: &OpEntry,
    key: &SigningKey,
) -> Result<u64, BrokerError> {
    let seq = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let (head_seq, head_hash): (i64, Vec<u8>) =
            sqlx::query_as(LOCK_HEAD).fetch_one(&mut *tx).await?;
        let seq = to_u64(head_seq) + 1;
        // Taken under the lock, so times follow the sequence on one clock.
        let record = OpRecord::from_entry(entry, seq, crate::store::now_rfc3339());
        let hash = chain_hash(&to_hash(&head_hash, "head hash")?, &record.leaf_hash());
        let seal = EntrySeal::sign(seq, hash, key);
        sqlx::query(&format!(
            "INSERT INTO operation_log ({ENTRY_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(to_i64(seq))
        .bind(&record.at)
        .bind(&record.actor)
        .bind(&record.org)
        .bind(record.action.as_str())
        .bind(&record.target)
        .bind(record.result.name())
        .bind(record.result.code().map(|c| c.as_str()))
        .bind(&record.source)
        .bind(&record.detail)
        .bind(hash.to_vec())
        .bind(&seal.key_id)
        .bind(seal.signature.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE operation_log_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(to_i64(seq))
            .bind(hash.to_vec())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        seq
    });
    Ok(seq)
}

/// The head row: last sequence and its chain hash.
pub(crate) async fn read_head(pools: &Pools) -> Result<(u64, Hash), BrokerError> {
    let (seq, hash): (i64, Vec<u8>) = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT seq, hash FROM operation_log_head WHERE id = 1")
            .fetch_one(pool)
            .await?
    });
    Ok((to_u64(seq), to_hash(&hash, "head hash")?))
}

/// The checkpoint with the highest sequence, if any.
pub(crate) async fn latest_checkpoint(pools: &Pools) -> Result<Option<OpCheckpoint>, BrokerError> {
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM operation_log_checkpoints ORDER BY seq DESC LIMIT 1"
    );
    let row: Option<CheckpointRow> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(&sql).fetch_optional(pool).await?
    });
    Ok(row.map(|r| r.to_checkpoint()))
}

/// The checkpoint at `seq`, if any.
pub(crate) async fn checkpoint_at(
    pools: &Pools,
    seq: u64,
) -> Result<Option<OpCheckpoint>, BrokerError> {
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM operation_log_checkpoints WHERE seq = $1");
    let row: Option<CheckpointRow> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(&sql)
            .bind(to_i64(seq))
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(|r| r.to_checkpoint()))
}

/// Signs and stores a checkpoint of (`seq`, `hash`) under the head lock,
/// naming the newest stored checkpoint as its predecessor (read under the
/// same lock, so checkpoints from several processes form one chain).
/// `None` when a checkpoint at or past `seq` exists already.
pub(crate) async fn insert_checkpoint(
    pools: &Pools,
    seq: u64,
    hash: Hash,
    key: &SigningKey,
) -> Result<Option<OpCheckpoint>, BrokerError> {
    let sql = format!(
        "INSERT INTO operation_log_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
    );
    let cp = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let (head_seq, _): (i64, Vec<u8>) = sqlx::query_as(LOCK_HEAD).fetch_one(&mut *tx).await?;
        if to_u64(head_seq) < seq {
            return Err(BrokerError::refused(
                kakehashi_interfaces::ErrorCode::Internal,
                format!("operation-log head moved back below {seq}; not sealing"),
            ));
        }
        let (prev,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(seq) FROM operation_log_checkpoints")
                .fetch_one(&mut *tx)
                .await?;
        let prev = prev.map(to_u64).unwrap_or(0);
        if prev >= seq {
            return Ok(None);
        }
        let cp = OpCheckpoint::sign(seq, hash, prev, crate::store::now_rfc3339(), key);
        sqlx::query(&sql)
            .bind(to_i64(cp.seq))
            .bind(cp.head_hash.to_vec())
            .bind(to_i64(cp.prev_seq))
            .bind(&cp.at)
            .bind(&cp.key_id)
            .bind(cp.signature.clone())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        cp
    });
    Ok(Some(cp))
}

/// Entries matching `filter`, newest first, below `before_seq` if given.
pub(crate) async fn search(
    pools: &Pools,
    filter: &OpFilter,
    limit: usize,
    before_seq: Option<u64>,
) -> Result<Vec<EntryRow>, BrokerError> {
    let since = filter.since.map(crate::store::timestamp);
    let until = filter.until.map(crate::store::timestamp);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<EntryRow> = crate::on_pool!(pools, read, |pool| {
        let mut sql = sqlx::QueryBuilder::new(format!(
            "SELECT {ENTRY_COLUMNS} FROM operation_log WHERE 1 = 1"
        ));
        if let Some(before) = before_seq {
            sql.push(" AND seq < ").push_bind(to_i64(before));
        }
        if let Some(since) = &since {
            sql.push(" AND logged_at >= ").push_bind(since.as_str());
        }
        if let Some(until) = &until {
            sql.push(" AND logged_at < ").push_bind(until.as_str());
        }
        if let Some(actor) = &filter.actor {
            sql.push(" AND actor = ").push_bind(actor.as_str());
        }
        if let Some(org) = &filter.org {
            sql.push(" AND org = ").push_bind(org.as_str());
        }
        if let Some(action) = filter.action {
            sql.push(" AND action = ").push_bind(action.as_str());
        }
        if let Some(result) = filter.result {
            sql.push(" AND result = ").push_bind(match result {
                OpResultFilter::Success => "success",
                OpResultFilter::Refused => "refused",
            });
        }
        sql.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
        sql.build_query_as::<EntryRow>().fetch_all(pool).await?
    });
    Ok(rows)
}

/// Rows read per round trip while walking the log.
pub(crate) const CHUNK: i64 = 1000;

impl Snapshot {
    /// The head row's sequence and hash.
    pub async fn oplog_head(&mut self) -> Result<(u64, Hash), BrokerError> {
        const SQL: &str = "SELECT seq, hash FROM operation_log_head WHERE id = 1";
        let (seq, hash): (i64, Vec<u8>) = crate::on_snapshot!(self, |tx| {
            sqlx::query_as(SQL).fetch_one(&mut **tx).await?
        });
        Ok((to_u64(seq), to_hash(&hash, "head hash")?))
    }

    /// Up to [`CHUNK`] entries with `after < seq <= upto`, in order.
    pub async fn oplog_entries(
        &mut self,
        after: i64,
        upto: i64,
    ) -> Result<Vec<EntryRow>, BrokerError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM operation_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        );
        Ok(crate::on_snapshot!(self, |tx| {
            sqlx::query_as(&sql)
                .bind(after)
                .bind(upto)
                .bind(CHUNK)
                .fetch_all(&mut **tx)
                .await?
        }))
    }

    /// Up to [`CHUNK`] checkpoints with `seq > after`, in order.
    pub async fn oplog_checkpoints(
        &mut self,
        after: i64,
    ) -> Result<Vec<CheckpointRow>, BrokerError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM operation_log_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2"
        );
        Ok(crate::on_snapshot!(self, |tx| {
            sqlx::query_as(&sql)
                .bind(after)
                .bind(CHUNK)
                .fetch_all(&mut **tx)
                .await?
        }))
    }
}
