//! What every org may read about the record log, so that each can witness
//! it (R16): the checkpoint keys the broker stands by, the latest signed
//! checkpoint (kept in memory when sealed, so answers carry it without a
//! database read), and the leaf hashes between two heads — hashes only,
//! never a record's content.

use std::sync::RwLock;

use ed25519_dalek::VerifyingKey;
use kakehashi_interfaces::audit::{Checkpoint, GENESIS_HASH};
use kakehashi_interfaces::records::{
    ChainLink, Hex, RecordChain, RecordKey, RecordKeySet, SignedCheckpoint, MAX_CHAIN_LINKS,
};
use kakehashi_interfaces::ErrorCode;

use super::db::{self, to_i64};
use super::RecordLog;
use crate::error::BrokerError;
use crate::store::record_source::RecordSource;

/// The latest checkpoint signed by a trusted key that this process knows.
#[derive(Debug, Default)]
pub(super) struct Latest(RwLock<Option<SignedCheckpoint>>);

/// Rows hashed between two yields to the scheduler.
const YIELD_EVERY_ROWS: u64 = 64;

impl RecordLog {
    /// The checkpoint keys to publish: the current sealer key first, then
    /// the older keys still trusted (their checkpoints remain valid), by id.
    pub fn record_keys(&self) -> RecordKeySet {
        let sealer = self.sealer.current();
        let current = sealer.key.verifying_key();
        let mut keys = vec![RecordKey::new(&current, true)];
        for id in sealer.trusted.ids() {
            if id == sealer.key_id {
                continue;
            }
            if let Some(key) = sealer.trusted.get(&id) {
                keys.push(RecordKey::new(key, false));
            }
        }
        RecordKeySet { keys }
    }

    /// The latest signed checkpoint this process knows (none before the
    /// first): a read of memory, for every answer.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.latest.0.read().ok().and_then(|l| l.clone())
    }

    /// The public key of a trusted checkpoint key.
    pub(super) fn trusted_key(&self, key_id: &str) -> Option<VerifyingKey> {
        self.sealer.current().trusted.get(key_id).copied()
    }

    /// Keeps `cp` as the latest checkpoint when it is newer and signed by a
    /// trusted key.
    pub(super) fn remember_checkpoint(&self, cp: &Checkpoint) {
        if cp.verify(&self.sealer.current().trusted).is_err() {
            return;
        }
        let Ok(wire) = SignedCheckpoint::from_checkpoint(cp) else {
            return;
        };
        if let Ok(mut latest) = self.latest.0.write() {
            // The stored latest wins at an equal sequence: the cache mirrors it.
            if latest.as_ref().is_none_or(|l| l.seq <= wire.seq) {
                *latest = Some(wire);
            }
        }
    }

    /// Loads the stored latest checkpoint (at open).
    pub(super) async fn load_latest_checkpoint(&self) -> Result<(), BrokerError> {
        if let Some(row) = db::latest_checkpoint(&self.pools).await? {
            self.remember_checkpoint(&row.to_checkpoint());
        }
        Ok(())
    }

    /// Reads the stored latest checkpoint (whichever node signed it) and
    /// keeps it when newer: the sealing task's, off the query path.
    pub(super) async fn refresh_latest_checkpoint(&self) {
        if let Err(e) = self.load_latest_checkpoint().await {
            tracing::warn!(error = %e, "the latest records checkpoint could not be read");
        }
    }

    /// `GET /v1/record-chain`: the leaf hashes after `from` up to `to`
    /// (default and at most the latest checkpoint; at most
    /// [`MAX_CHAIN_LINKS`]), the hash stored at `from`, and the latest
    /// checkpoint. Refused when there is no checkpoint yet, when `from` lies
    /// beyond it, or when records up to `from` were purged.
    pub async fn chain(&self, from: u64, to: Option<u64>) -> Result<RecordChain, BrokerError> {
        let checkpoint = self.latest_checkpoint().ok_or_else(|| {
            BrokerError::refused(
                ErrorCode::NotFound,
                "no provision-record checkpoint is signed yet; ask again later",
            )
        })?;
        if from > checkpoint.seq {
            return Err(BrokerError::refused(
                ErrorCode::InvalidInput,
                format!(
                    "from={from} lies beyond the latest checkpoint ({}); the log is shorter than a checkpoint you kept, or it was cut",
                    checkpoint.seq
                ),
            ));
        }
        let to = to.unwrap_or(checkpoint.seq).min(checkpoint.seq);
        let end = to.min(from.saturating_add(MAX_CHAIN_LINKS)).max(from);
        let mut snap = self.pools.backend().snapshot().await?;
        let head = snap.head().await?;
        let from_hash = if from == head.cut_seq {
            head.cut_hash
        } else if from < head.cut_seq {
            return Err(BrokerError::refused(
                ErrorCode::NotFound,
                format!(
                    "records up to {} were purged at the end of their retention period; only later checkpoints can be witnessed",
                    head.cut_seq
                ),
            ));
        } else if from == 0 {
            GENESIS_HASH
        } else {
            snap.stored_hash(from).await?.ok_or_else(|| {
                BrokerError::refused(
                    ErrorCode::NotFound,
                    format!("record {from} is not in the log"),
                )
            })?
        };
        let mut links = Vec::new();
        if end > from {
            let mut rows =
                RecordSource::open(&self.pools, to_i64(from + 1), to_i64(end), head.cut_seq);
            while let Some(row) = rows.next(&mut snap).await? {
                let seq = row.seq_u64();
                if seq % YIELD_EVERY_ROWS == 0 {
                    tokio::task::yield_now().await;
                }
                let (record, _) = row.into_record().map_err(|e| {
                    BrokerError::refused(
                        ErrorCode::Internal,
                        format!("record {seq} cannot be decoded ({e}); run records verify"),
                    )
                })?;
                links.push(ChainLink {
                    seq,
                    leaf: Hex(record.leaf_hash()),
                });
            }
        }
        Ok(RecordChain {
            from,
            from_hash: Hex(from_hash),
            links,
            checkpoint,
        })
    }
}
