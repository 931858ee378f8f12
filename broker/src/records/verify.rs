//! Verification of the stored chain against signed checkpoints, and the
//! sealer's keys in the key directory.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use kakehashi_interfaces::audit::{
    ChainFailure, ChainSummary, ChainVerifier, FailureKind, Hash, TrustedKeys,
};
use serde::Serialize;
use zeroize::Zeroizing;

use super::db::{to_i64, CheckpointRow, Cursor, RecordRow, Snapshot};
use crate::error::BrokerError;
use crate::store::Pools;

/// File name of the active sealer key (Ed25519, PKCS#8 PEM, mode 0600).
pub const SEALER_KEY_FILE: &str = "records-sealer.pem";

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every record reproduces its hash, no sequence is missing, and every
    /// checkpoint is validly signed and matches.
    Intact(ChainSummary),
    /// The first bad sequence number and what is wrong there.
    Broken(ChainFailure),
}

impl Verdict {
    /// True when intact.
    pub fn is_intact(&self) -> bool {
        matches!(self, Verdict::Intact(_))
    }
}

fn key_error(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Config(format!("records sealer key {what}: {e}"))
}

/// The sealer public keys a verifier trusts: every `records-sealer*.pem`
/// (private, PKCS#8) and `records-sealer*.pub` (hex public key) in the key
/// directory. Keys stored in the database are never trusted: whoever can
/// edit the records could add their own.
pub fn trusted_keys(key_dir: &Path) -> Result<TrustedKeys, BrokerError> {
    let mut keys = TrustedKeys::new();
    let entries = match std::fs::read_dir(key_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(BrokerError::io(format!("read {}", key_dir.display()), e)),
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name.starts_with("records-sealer") {
            continue;
        }
        let path = entry.path();
        let read = || {
            std::fs::read_to_string(&path)
                .map(Zeroizing::new)
                .map_err(|e| BrokerError::io(format!("read {}", path.display()), e))
        };
        if name.ends_with(".pem") {
            let key = SigningKey::from_pkcs8_pem(&read()?).map_err(|e| key_error(&name, e))?;
            keys.add(key.verifying_key());
        } else if name.ends_with(".pub") {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(read()?.trim(), &mut bytes)
                .map_err(|_| key_error(&name, "not 32 hex-encoded bytes"))?;
            keys.add(VerifyingKey::from_bytes(&bytes).map_err(|e| key_error(&name, e))?);
        }
    }
    Ok(keys)
}

/// Loads the sealer key, creating the key directory (0700) and the key
/// (0600) on first use.
pub(crate) fn load_or_create_sealer(key_dir: &Path) -> Result<SigningKey, BrokerError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if !key_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(key_dir)
            .map_err(|e| BrokerError::io(format!("create {}", key_dir.display()), e))?;
    }
    let path = key_dir.join(SEALER_KEY_FILE);
    if !path.exists() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| key_error("encode", e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| BrokerError::io(format!("create {}", path.display()), e))?;
        file.write_all(pem.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| BrokerError::io(format!("write {}", path.display()), e))?;
    }
    let pem = Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| BrokerError::io(format!("read {}", path.display()), e))?,
    );
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| key_error(SEALER_KEY_FILE, e))
}

/// How a walk over stored records went.
pub(crate) struct Walk {
    pub verdict: Verdict,
    /// Chain hash at the last record walked.
    pub head: Hash,
    /// Chain hash at the requested sequence, if walked.
    pub captured: Option<Hash>,
}

/// What to walk.
pub(crate) struct WalkPlan {
    /// Chain starts after this sequence …
    pub start_seq: u64,
    /// … with this hash.
    pub start_hash: Hash,
    /// Last sequence to walk; the walk expects records up to exactly here.
    pub end_seq: u64,
    /// Also read rows at or before `start_seq` (they must not exist) and
    /// require a purge record confirming a non-zero start.
    pub whole_store: bool,
    /// Remember the chain hash at this sequence.
    pub capture: Option<u64>,
}

/// Rows verified between two yields to the scheduler.
const YIELD_EVERY_ROWS: u64 = 32;

/// Walks records and checkpoints in sequence order through a verifier, in
/// one read snapshot (constant memory). Records are bounded by `end_seq`.
pub(crate) async fn walk(
    pools: &Pools,
    keys: TrustedKeys,
    plan: WalkPlan,
) -> Result<Walk, BrokerError> {
    let mut snap = Snapshot::begin(pools).await?;
    walk_in(&mut snap, keys, plan).await
}

async fn walk_in(
    snap: &mut Snapshot,
    keys: TrustedKeys,
    plan: WalkPlan,
) -> Result<Walk, BrokerError> {
    let mut verifier = if plan.whole_store {
        ChainVerifier::new(keys, plan.start_seq, plan.start_hash)
    } else {
        ChainVerifier::segment(keys, plan.start_seq, plan.start_hash)
    };
    let lo = if plan.whole_store {
        0
    } else {
        to_i64(plan.start_seq + 1)
    };
    let mut records = Cursor::<RecordRow>::new(lo, to_i64(plan.end_seq));
    let mut checkpoints = Cursor::<CheckpointRow>::new(to_i64(plan.start_seq + 1), i64::MAX);
    let mut pending = checkpoints.next(snap).await?;
    let mut captured = None;
    let broken = |verifier: &ChainVerifier, f: ChainFailure, captured| Walk {
        verdict: Verdict::Broken(f),
        head: verifier.head_hash(),
        captured,
    };
    while let Some(row) = records.next(snap).await? {
        let seq = row.seq_u64();
        // Rows come from a buffered page without yielding; hashing thousands
        // of them in one poll would hold a request worker for milliseconds
        // (the checkpoint sealer walks the new tail every few seconds).
        if seq % YIELD_EVERY_ROWS == 0 {
            tokio::task::yield_now().await;
        }
        let (record, stored) = match row.to_record() {
            Ok(r) => r,
            Err(e) => {
                return Ok(broken(
                    &verifier,
                    ChainFailure::new(seq, FailureKind::Malformed(e)),
                    captured,
                ))
            }
        };
        if let Err(f) = verifier.push_record(&record, Some(&stored)) {
            return Ok(broken(&verifier, f, captured));
        }
        if plan.capture == Some(seq) {
            captured = Some(verifier.head_hash());
        }
        while pending.as_ref().is_some_and(|cp| cp.seq <= row.seq) {
            if let Some(cp) = pending.take() {
                if let Err(f) = verifier.push_checkpoint(&cp.to_checkpoint()) {
                    return Ok(broken(&verifier, f, captured));
                }
            }
            pending = checkpoints.next(snap).await?;
        }
    }
    // Checkpoints beyond the last record walked: the tail was truncated —
    // unless (beyond `end_seq`, read before the snapshot) a running broker
    // appended and sealed meanwhile; then the checkpointed record exists.
    while let Some(cp) = pending.take() {
        let cp = cp.to_checkpoint();
        if cp.seq > plan.end_seq && snap.stored_hash(cp.seq).await?.is_some() {
            break;
        }
        if let Err(f) = verifier.push_checkpoint(&cp) {
            return Ok(broken(&verifier, f, captured));
        }
        pending = checkpoints.next(snap).await?;
    }
    let head = verifier.head_hash();
    let verdict = match verifier.finish(Some(plan.end_seq)) {
        Ok(summary) => Verdict::Intact(summary),
        Err(f) => Verdict::Broken(f),
    };
    Ok(Walk {
        verdict,
        head,
        captured,
    })
}

/// Verifies every stored record: names the first bad sequence number of any
/// edited, deleted, inserted or reordered record, or of a truncated tail.
/// Reads one snapshot, so it is safe to run while brokers append and purge.
pub async fn verify_store(pools: &Pools, keys: &TrustedKeys) -> Result<Verdict, BrokerError> {
    let mut snap = Snapshot::begin(pools).await?;
    let head = snap.head().await?;
    let walk = walk_in(
        &mut snap,
        keys.clone(),
        WalkPlan {
            start_seq: head.cut_seq,
            start_hash: head.cut_hash,
            end_seq: head.seq,
            whole_store: true,
            capture: None,
        },
    )
    .await?;
    Ok(walk.verdict)
}
