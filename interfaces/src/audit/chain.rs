//! Hash chaining: each record's chain hash covers the one before it, so
//! editing, inserting, removing or reordering a record changes every later
//! hash; and the ways a chain is found broken.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Hash;

/// Hash before the first record.
pub const GENESIS_HASH: Hash = [0; 32];

const CHAIN_TAG: &[u8] = b"kakehashi/records/v1/chain\0";

/// `hash_n = SHA-256(chain tag ‖ hash_{n-1} ‖ leaf_n)`.
pub fn chain_hash(prev: &Hash, leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(CHAIN_TAG);
    h.update(prev);
    h.update(leaf);
    h.finalize().into()
}

/// Why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A sequence number is absent.
    #[error("record is missing (deleted)")]
    Missing,
    /// A sequence number appears twice, out of order, or before the purge cut.
    #[error("record is out of order, duplicated or before the purge cut (inserted or reordered)")]
    Unexpected,
    /// The recomputed chain hash differs from the stored one.
    #[error("record does not match its stored chain hash (edited, inserted or reordered)")]
    HashMismatch,
    /// The recomputed chain does not reach a signed head.
    #[error("records from here up to checkpoint {checkpoint} do not reproduce its signed head hash (altered)")]
    CheckpointMismatch {
        /// The checkpoint that failed.
        checkpoint: u64,
    },
    /// A checkpoint covers records that no longer exist.
    #[error("record is missing: checkpoint {checkpoint} covers it (tail truncated)")]
    Truncated {
        /// The checkpoint that covers the missing records.
        checkpoint: u64,
    },
    /// The stored head claims more records than exist.
    #[error("record is missing: the stored head is at {head} (tail truncated)")]
    HeadAhead {
        /// The stored head sequence.
        head: u64,
    },
    /// A record lies beyond the stored head.
    #[error("record lies beyond the stored head (inserted)")]
    BeyondHead,
    /// A checkpoint's signature is invalid.
    #[error("checkpoint {checkpoint} has an invalid signature")]
    BadSignature {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// A checkpoint was signed by a key that is not trusted.
    #[error("checkpoint {checkpoint} is signed by untrusted key {key_id}")]
    UnknownKey {
        /// The checkpoint.
        checkpoint: u64,
        /// Its key id.
        key_id: String,
    },
    /// A checkpoint arrived for a sequence already passed.
    #[error("checkpoint {checkpoint} is out of order")]
    CheckpointOrder {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// The purge record does not state the cut the chain starts from.
    #[error("the purge record disagrees with the chain's starting point")]
    AnchorMismatch,
    /// Records before this one are gone, but no purge record says so.
    #[error("earlier records were removed without a purge record")]
    AnchorUnconfirmed,
    /// The records after `proven` are not covered by any checkpoint.
    #[error("record is not covered by a signed checkpoint")]
    Unsealed,
    /// A stored record cannot be decoded.
    #[error("record cannot be decoded: {0}")]
    Malformed(String),
}

/// The first bad sequence number and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("sequence {seq}: {kind}")]
pub struct ChainFailure {
    /// First sequence number that fails.
    pub seq: u64,
    /// What is wrong.
    pub kind: FailureKind,
}

impl ChainFailure {
    /// A failure at `seq`.
    pub fn new(seq: u64, kind: FailureKind) -> Self {
        Self { seq, kind }
    }
}
