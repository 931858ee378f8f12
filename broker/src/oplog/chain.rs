//! The hash chain over entries, the signatures over it, and the pure check
//! of a run of stored entries and checkpoints (no IO).
//!
//! ```text
//! hash_n     = SHA-256("kakehashi/oplog/v1/chain\0" ‖ hash_{n-1} ‖ leaf_n)
//! hash_0     = 32 zero bytes
//! entry sig  = Ed25519 over "kakehashi/oplog/v1/entry\0"
//!              ‖ u64 seq ‖ hash_seq[32] ‖ str key_id
//! checkpoint = Ed25519 over "kakehashi/oplog/v1/checkpoint\0"
//!              ‖ u64 seq ‖ hash_seq[32] ‖ u64 previous checkpoint seq (0: none)
//!              ‖ str at ‖ str key_id
//! key_id     = first 16 lowercase hex digits of SHA-256(public key)
//! ```
//!
//! The tags differ from the provision records' so a signature over one can
//! never be passed off as the other, although the same sealer key signs
//! both. Human actions are rare, so every entry is signed as it is appended:
//! an entry edited and re-chained without the key is named exactly. Each
//! checkpoint names the one before it, so a deleted checkpoint is named by
//! its successor; the newest is held against the sealer's state file.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer, SigningKey};
use kakehashi_interfaces::audit::{key_id, Hash, TrustedKeys};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::entry::{put_str, OpRecord};

const CHAIN_TAG: &[u8] = b"kakehashi/oplog/v1/chain\0";
const ENTRY_SIG_TAG: &[u8] = b"kakehashi/oplog/v1/entry\0";
const CHECKPOINT_TAG: &[u8] = b"kakehashi/oplog/v1/checkpoint\0";

/// `hash_n = SHA-256(chain tag ‖ hash_{n-1} ‖ leaf_n)`.
pub fn chain_hash(prev: &Hash, leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(CHAIN_TAG);
    h.update(prev);
    h.update(leaf);
    h.finalize().into()
}

/// What is stored beside an entry: its chain hash and the sealer's
/// signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySeal {
    /// Chain hash at this entry.
    pub hash: Hash,
    /// Id of the key that signed it.
    pub key_id: String,
    /// Ed25519 signature (64 bytes when intact).
    pub signature: Vec<u8>,
}

fn entry_signing_bytes(seq: u64, hash: &Hash, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_SIG_TAG.len() + 8 + 32 + 20);
    out.extend_from_slice(ENTRY_SIG_TAG);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    put_str(&mut out, key_id);
    out
}

impl EntrySeal {
    /// Signs the chain hash at `seq`.
    pub fn sign(seq: u64, hash: Hash, key: &SigningKey) -> EntrySeal {
        let key_id = key_id(&key.verifying_key());
        let signature = key
            .sign(&entry_signing_bytes(seq, &hash, &key_id))
            .to_bytes()
            .to_vec();
        EntrySeal {
            hash,
            key_id,
            signature,
        }
    }

    /// True when a trusted key signed this hash at `seq`.
    pub fn verify(&self, seq: u64, keys: &TrustedKeys) -> bool {
        let Some(key) = keys.get(&self.key_id) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(self.signature.as_slice()) else {
            return false;
        };
        key.verify_strict(
            &entry_signing_bytes(seq, &self.hash, &self.key_id),
            &Signature::from_bytes(&sig),
        )
        .is_ok()
    }
}

/// A signed statement "the log up to `seq` ends in `head_hash`, and the
/// checkpoint before this one is at `prev_seq`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpCheckpoint {
    /// Last sequence covered.
    pub seq: u64,
    /// Chain hash at `seq`.
    pub head_hash: Hash,
    /// Sequence of the previous checkpoint (0 for the first).
    pub prev_seq: u64,
    /// When it was signed (informative).
    pub at: String,
    /// Which key signed it.
    pub key_id: String,
    /// Ed25519 signature (64 bytes when intact).
    pub signature: Vec<u8>,
}

impl OpCheckpoint {
    fn signing_bytes(seq: u64, head: &Hash, prev: u64, at: &str, key_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_TAG.len() + 8 + 32 + 8 + 64);
        out.extend_from_slice(CHECKPOINT_TAG);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(head);
        out.extend_from_slice(&prev.to_be_bytes());
        put_str(&mut out, at);
        put_str(&mut out, key_id);
        out
    }

    /// Signs a checkpoint.
    pub fn sign(
        seq: u64,
        head_hash: Hash,
        prev_seq: u64,
        at: String,
        key: &SigningKey,
    ) -> OpCheckpoint {
        let key_id = key_id(&key.verifying_key());
        let signature = key
            .sign(&Self::signing_bytes(
                seq, &head_hash, prev_seq, &at, &key_id,
            ))
            .to_bytes()
            .to_vec();
        OpCheckpoint {
            seq,
            head_hash,
            prev_seq,
            at,
            key_id,
            signature,
        }
    }

    /// True when a trusted key made this signature.
    pub fn verify(&self, keys: &TrustedKeys) -> bool {
        let Some(key) = keys.get(&self.key_id) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(self.signature.as_slice()) else {
            return false;
        };
        let bytes = Self::signing_bytes(
            self.seq,
            &self.head_hash,
            self.prev_seq,
            &self.at,
            &self.key_id,
        );
        key.verify_strict(&bytes, &Signature::from_bytes(&sig))
            .is_ok()
    }
}

/// What is wrong at the first bad sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpDamage {
    /// The entry does not reproduce its stored chain hash (or cannot be read).
    #[error("entry edited (改ざん): it does not reproduce its stored hash")]
    Edited,
    /// The entry is missing: deleted from the middle, or the tail cut.
    #[error("entry deleted (削除): the sequence has a gap or the tail was cut")]
    Deleted,
    /// An entry that was never appended: beyond the head, duplicated, or
    /// pushed in with the entries after it renumbered.
    #[error("entry inserted (挿入)")]
    Inserted,
    /// The entry reproduces its stored hash, but the sealer never signed
    /// that hash: edited or inserted and the chain recomputed without the key.
    #[error("entry edited and re-chained (改ざん・再計算): its signature does not match")]
    Rechained,
    /// The entries from here do not reproduce the head a valid checkpoint
    /// signed.
    #[error("entries up to checkpoint {checkpoint} do not reproduce its signed head (再計算)")]
    CheckpointMismatch {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// A checkpoint is gone: the next checkpoint names it, or the sealer's
    /// state file says it was signed.
    #[error("checkpoint missing (署名済みチェックポイントの削除)")]
    CheckpointMissing,
    /// A checkpoint's signature is invalid or its key not trusted.
    #[error("checkpoint forged (偽造): invalid signature or untrusted key")]
    CheckpointForged,
    /// An entry older than the grace period is covered by no checkpoint.
    #[error("entry not covered by a signed checkpoint (未封印)")]
    Unsealed,
}

impl OpDamage {
    /// The stable snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            OpDamage::Edited => "edited",
            OpDamage::Deleted => "deleted",
            OpDamage::Inserted => "inserted",
            OpDamage::Rechained => "rechained",
            OpDamage::CheckpointMismatch { .. } => "checkpoint_mismatch",
            OpDamage::CheckpointMissing => "checkpoint_missing",
            OpDamage::CheckpointForged => "checkpoint_forged",
            OpDamage::Unsealed => "unsealed",
        }
    }
}

/// The first bad sequence number and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("sequence {seq}: {damage}")]
pub struct OpFailure {
    /// First sequence number that fails.
    pub seq: u64,
    /// What is wrong.
    #[serde(flatten)]
    pub damage: OpDamage,
}

impl OpFailure {
    /// A failure at `seq`.
    pub fn new(seq: u64, damage: OpDamage) -> Self {
        Self { seq, damage }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpSummary {
    /// Entries checked.
    pub entries: u64,
    /// Last sequence checked (0 when empty).
    pub last_seq: u64,
    /// Chain hash there, hex.
    pub head_hash: String,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Highest sequence covered by a checkpoint.
    pub sealed_seq: u64,
    /// Key ids that signed the checkpoints.
    pub key_ids: Vec<String>,
}

/// The last checkpoint a sealer signed, from its state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedHead {
    /// Its sequence.
    pub seq: u64,
    /// The chain hash it signed.
    pub hash: Hash,
}

/// Checks entries, in sequence order, and the checkpoints at each, against
/// trusted keys. Feed each entry (with the one after it, if known), then the
/// checkpoints at its sequence.
#[derive(Debug, Clone)]
pub(crate) struct ChainCheck {
    keys: TrustedKeys,
    next_seq: u64,
    prev: Hash,
    last_checkpoint: u64,
    sealed_seq: u64,
    entries: u64,
    checkpoints: u64,
    key_ids: BTreeSet<String>,
    expect: Option<SignedHead>,
    expect_met: bool,
    unsealed_before: Option<String>,
    old_unsealed: Option<u64>,
}

impl ChainCheck {
    /// Starts after `start_seq` with `start_hash`; `last_checkpoint` is the
    /// checkpoint there (0 when none), which the next checkpoint must name.
    pub fn new(keys: TrustedKeys, start_seq: u64, start_hash: Hash, last_checkpoint: u64) -> Self {
        Self {
            keys,
            next_seq: start_seq + 1,
            prev: start_hash,
            last_checkpoint,
            sealed_seq: start_seq,
            entries: 0,
            checkpoints: 0,
            key_ids: BTreeSet::new(),
            expect: None,
            expect_met: false,
            unsealed_before: None,
            old_unsealed: None,
        }
    }

    /// Requires a valid checkpoint at the head a sealer says it signed.
    pub fn expect_signed(&mut self, head: SignedHead) {
        self.expect = (head.seq > 0).then_some(head);
    }

    /// Requires every entry logged before `at` (fixed-width RFC 3339) to be
    /// covered by a checkpoint.
    pub fn require_sealed_before(&mut self, at: String) {
        self.unsealed_before = Some(at);
    }

    /// Last sequence pushed.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Chain hash at [`ChainCheck::last_seq`].
    pub fn head_hash(&self) -> Hash {
        self.prev
    }

    /// Adds the next stored entry; `next` is the stored entry after it, if
    /// known (to tell an inserted entry from an edited one).
    pub fn push_entry(
        &mut self,
        record: &OpRecord,
        seal: &EntrySeal,
        next: Option<(&OpRecord, &EntrySeal)>,
    ) -> Result<(), OpFailure> {
        let seq = record.seq;
        if seq < self.next_seq {
            return Err(OpFailure::new(seq, OpDamage::Inserted));
        }
        if seq > self.next_seq {
            return Err(OpFailure::new(self.next_seq, OpDamage::Deleted));
        }
        let hash = chain_hash(&self.prev, &record.leaf_hash());
        if hash != seal.hash {
            // Inserted with the entries after it renumbered: the next one,
            // back at this sequence, continues the chain as it was signed.
            let shifted = next.is_some_and(|(n, nseal)| {
                let mut n = n.clone();
                n.seq = seq;
                chain_hash(&self.prev, &n.leaf_hash()) == nseal.hash
            });
            let damage = if shifted {
                OpDamage::Inserted
            } else {
                OpDamage::Edited
            };
            return Err(OpFailure::new(seq, damage));
        }
        if !seal.verify(seq, &self.keys) {
            return Err(OpFailure::new(seq, OpDamage::Rechained));
        }
        if self.old_unsealed.is_none()
            && self
                .unsealed_before
                .as_deref()
                .is_some_and(|cutoff| record.at.as_str() < cutoff)
        {
            self.old_unsealed = Some(seq);
        }
        self.prev = hash;
        self.next_seq = seq + 1;
        self.entries += 1;
        Ok(())
    }

    /// An entry that cannot be decoded: reported as edited.
    pub fn unreadable(&self, seq: u64) -> OpFailure {
        if seq < self.next_seq {
            OpFailure::new(seq, OpDamage::Inserted)
        } else if seq > self.next_seq {
            OpFailure::new(self.next_seq, OpDamage::Deleted)
        } else {
            OpFailure::new(seq, OpDamage::Edited)
        }
    }

    /// Checks a checkpoint after the start: at the last pushed sequence, or
    /// beyond it when the entries it covers are gone.
    pub fn push_checkpoint(&mut self, cp: &OpCheckpoint) -> Result<(), OpFailure> {
        if !cp.verify(&self.keys) {
            return Err(OpFailure::new(cp.seq, OpDamage::CheckpointForged));
        }
        if cp.prev_seq > self.last_checkpoint {
            return Err(OpFailure::new(cp.prev_seq, OpDamage::CheckpointMissing));
        }
        if cp.prev_seq < self.last_checkpoint {
            // Validly signed, but not after the checkpoint before it.
            return Err(OpFailure::new(cp.seq, OpDamage::Inserted));
        }
        let last = self.last_seq();
        if cp.seq > last {
            return Err(OpFailure::new(last + 1, OpDamage::Deleted));
        }
        if cp.seq < last {
            return Err(OpFailure::new(cp.seq, OpDamage::Inserted));
        }
        if cp.head_hash != self.prev {
            return Err(OpFailure::new(
                self.sealed_seq + 1,
                OpDamage::CheckpointMismatch { checkpoint: cp.seq },
            ));
        }
        if let Some(expect) = self.expect.filter(|e| e.seq == cp.seq) {
            if expect.hash != cp.head_hash {
                return Err(OpFailure::new(
                    cp.seq,
                    OpDamage::CheckpointMismatch { checkpoint: cp.seq },
                ));
            }
            self.expect_met = true;
        }
        self.sealed_seq = cp.seq;
        self.last_checkpoint = cp.seq;
        self.old_unsealed = None;
        self.checkpoints += 1;
        self.key_ids.insert(cp.key_id.clone());
        Ok(())
    }

    /// Ends the check: `stored_head` is the sequence the head row claims.
    pub fn finish(self, stored_head: u64) -> Result<OpSummary, OpFailure> {
        let last = self.last_seq();
        if stored_head > last {
            return Err(OpFailure::new(last + 1, OpDamage::Deleted));
        }
        if stored_head < last {
            return Err(OpFailure::new(stored_head + 1, OpDamage::Inserted));
        }
        if let Some(expect) = self.expect.filter(|_| !self.expect_met) {
            // The sealer signed a head this store no longer has.
            return Err(if expect.seq > last {
                OpFailure::new(last + 1, OpDamage::Deleted)
            } else {
                OpFailure::new(expect.seq, OpDamage::CheckpointMissing)
            });
        }
        if let Some(seq) = self.old_unsealed {
            return Err(OpFailure::new(seq, OpDamage::Unsealed));
        }
        Ok(OpSummary {
            entries: self.entries,
            last_seq: last,
            head_hash: hex::encode(self.prev),
            checkpoints: self.checkpoints,
            sealed_seq: self.sealed_seq,
            key_ids: self.key_ids.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use kakehashi_interfaces::audit::GENESIS_HASH;

    use super::*;
    use crate::oplog::entry::{OpAction, OpResult};

    fn key() -> (SigningKey, TrustedKeys) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut keys = TrustedKeys::new();
        keys.add(key.verifying_key());
        (key, keys)
    }

    fn record(seq: u64) -> OpRecord {
        OpRecord {
            seq,
            at: format!("2026-11-23T09:50:{:02}.000000Z", seq % 60),
            actor: format!("user-{seq}"),
            org: Some("city-kawagoe".into()),
            action: OpAction::LoginSucceeded,
            target: None,
            result: OpResult::Success,
            source: Some("192.0.2.1".into()),
            detail: None,
        }
    }

    fn chain(n: u64, key: &SigningKey) -> Vec<(OpRecord, EntrySeal)> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let r = record(seq);
                prev = chain_hash(&prev, &r.leaf_hash());
                (r, EntrySeal::sign(seq, prev, key))
            })
            .collect()
    }

    fn run(
        entries: &[(OpRecord, EntrySeal)],
        cps: &[OpCheckpoint],
        keys: &TrustedKeys,
        head: u64,
    ) -> Result<OpSummary, OpFailure> {
        let mut check = ChainCheck::new(keys.clone(), 0, GENESIS_HASH, 0);
        let mut cps = cps.iter().peekable();
        for (i, (r, s)) in entries.iter().enumerate() {
            let next = entries.get(i + 1).map(|(r, s)| (r, s));
            check.push_entry(r, s, next)?;
            while let Some(cp) = cps.next_if(|cp| cp.seq <= r.seq) {
                check.push_checkpoint(cp)?;
            }
        }
        for cp in cps {
            check.push_checkpoint(cp)?;
        }
        check.finish(head)
    }

    #[test]
    fn oplog_check_names_each_kind_of_damage() {
        let (key, keys) = key();
        let entries = chain(6, &key);
        let cp3 = OpCheckpoint::sign(3, entries[2].1.hash, 0, "t".into(), &key);
        let cp6 = OpCheckpoint::sign(6, entries[5].1.hash, 3, "t".into(), &key);
        let cps = vec![cp3.clone(), cp6.clone()];
        let s = run(&entries, &cps, &keys, 6).unwrap();
        assert_eq!((s.entries, s.checkpoints, s.sealed_seq), (6, 2, 6));

        let fails = |entries: &[(OpRecord, EntrySeal)], cps: &[OpCheckpoint], head| {
            run(entries, cps, &keys, head).unwrap_err()
        };
        // Edited in place.
        let mut edited = entries.clone();
        edited[3].0.action = OpAction::LoginFailed;
        assert_eq!(fails(&edited, &cps, 6), OpFailure::new(4, OpDamage::Edited));
        // Edited and re-chained without the key.
        let mut prev = edited[2].1.hash;
        for (r, s) in edited.iter_mut().skip(3) {
            prev = chain_hash(&prev, &r.leaf_hash());
            s.hash = prev;
        }
        assert_eq!(
            fails(&edited, &cps, 6),
            OpFailure::new(4, OpDamage::Rechained)
        );
        // Deleted from the middle; tail cut with the head rewound.
        let mut gap = entries.clone();
        gap.remove(1);
        assert_eq!(fails(&gap, &cps, 6), OpFailure::new(2, OpDamage::Deleted));
        assert_eq!(
            fails(&entries[..4], &cps, 4),
            OpFailure::new(5, OpDamage::Deleted)
        );
        // Inserted with the later entries renumbered.
        let mut pushed = entries.clone();
        let mut forged = record(3);
        forged.actor = "intruder".into();
        pushed.insert(2, (forged, entries[2].1.clone()));
        for (i, (r, _)) in pushed.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(
            fails(&pushed, &[], 7),
            OpFailure::new(3, OpDamage::Inserted)
        );
        // Beyond the head.
        assert_eq!(
            fails(&entries, &[], 5),
            OpFailure::new(6, OpDamage::Inserted)
        );
        // A checkpoint deleted: its successor names it.
        assert_eq!(
            fails(&entries, std::slice::from_ref(&cp6), 6),
            OpFailure::new(3, OpDamage::CheckpointMissing)
        );
        // Forged: a flipped bit, or another key.
        let mut bad = cp6.clone();
        bad.signature[0] ^= 1;
        assert_eq!(
            fails(&entries, &[cp3.clone(), bad], 6),
            OpFailure::new(6, OpDamage::CheckpointForged)
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        let foreign = OpCheckpoint::sign(6, entries[5].1.hash, 3, "t".into(), &other);
        assert_eq!(
            fails(&entries, &[cp3.clone(), foreign], 6),
            OpFailure::new(6, OpDamage::CheckpointForged)
        );
    }

    #[test]
    fn oplog_check_holds_the_store_to_the_sealer_state() {
        let (key, keys) = key();
        let entries = chain(4, &key);
        let cp2 = OpCheckpoint::sign(2, entries[1].1.hash, 0, "t".into(), &key);
        let cp4 = OpCheckpoint::sign(4, entries[3].1.hash, 2, "t".into(), &key);
        let check = |cps: &[OpCheckpoint], state: SignedHead, cutoff: Option<&str>| {
            let mut c = ChainCheck::new(keys.clone(), 0, GENESIS_HASH, 0);
            c.expect_signed(state);
            if let Some(at) = cutoff {
                c.require_sealed_before(at.into());
            }
            for (r, s) in &entries {
                c.push_entry(r, s, None)?;
                for cp in cps.iter().filter(|cp| cp.seq == r.seq) {
                    c.push_checkpoint(cp)?;
                }
            }
            c.finish(4)
        };
        let at4 = SignedHead {
            seq: 4,
            hash: entries[3].1.hash,
        };
        assert!(check(&[cp2.clone(), cp4.clone()], at4, None).is_ok());
        // The newest checkpoint deleted: only the state file knows.
        assert_eq!(
            check(std::slice::from_ref(&cp2), at4, None).unwrap_err(),
            OpFailure::new(4, OpDamage::CheckpointMissing)
        );
        // Old entries no checkpoint covers.
        let at2 = SignedHead {
            seq: 2,
            hash: entries[1].1.hash,
        };
        assert_eq!(
            check(&[cp2], at2, Some("2027-01-01T00:00:00.000000Z")).unwrap_err(),
            OpFailure::new(3, OpDamage::Unsealed)
        );
    }
}
