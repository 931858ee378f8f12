//! The records sealer's memory outside the database: the last head it
//! signed, kept in a state file beside its key, and what the sealer found
//! when the stored chain does not extend that head.
//!
//! Whoever can write the database can recompute the public chain hashes,
//! delete checkpoints or restore an older backup; none of that reaches this
//! file. The sealer signs a new head only when the stored chain leads from
//! the head remembered here to it.

use std::io::Write;
use std::path::{Path, PathBuf};

use kakehashi_interfaces::audit::{Checkpoint, FailureKind, Hash};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// File in the key directory holding the last provision-record head the
/// sealer signed (JSON, mode 0600, replaced atomically, never by hand).
pub const STATE_FILE: &str = "records-sealer.state";

/// An administrator's acceptance of a head after investigating a finding
/// (`kakehashi-broker records accept-head`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// When (fixed-width RFC 3339 UTC).
    pub at: String,
    /// Who (`host:<login name>`).
    pub actor: String,
    /// Why, as the administrator wrote it.
    pub reason: String,
    /// The head the sealer had signed before (sequence), if any.
    pub previous_seq: Option<u64>,
    /// That head's chain hash (hex), so what the acceptance set aside stays
    /// on record after the database's copy is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealerState {
    /// Sequence of the last head signed (or accepted).
    pub seq: u64,
    /// Its chain hash, hex.
    pub head_hash: String,
    /// The checkpoint signed there: its time, key id and signature (hex);
    /// absent for a head an administrator accepted and nobody signed yet.
    pub checkpoint: Option<StateCheckpoint>,
    /// The latest administrator acceptance, kept until the next one.
    pub accepted: Option<Acceptance>,
}

/// The checkpoint a [`SealerState`] remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateCheckpoint {
    /// When it was signed.
    pub at: String,
    /// Which key signed it.
    pub key_id: String,
    /// The signature, hex.
    pub signature: String,
}

impl SealerState {
    /// The state after signing `cp`; keeps `accepted`.
    pub fn signed(cp: &Checkpoint, accepted: Option<Acceptance>) -> SealerState {
        SealerState {
            seq: cp.seq,
            head_hash: hex::encode(cp.head_hash),
            checkpoint: Some(StateCheckpoint {
                at: cp.at.clone(),
                key_id: cp.key_id.clone(),
                signature: hex::encode(cp.signature),
            }),
            accepted,
        }
    }

    /// The head hash as bytes.
    pub fn hash(&self) -> Result<Hash, BrokerError> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&self.head_hash, &mut hash).map_err(|_| {
            BrokerError::Config(format!(
                "records sealer state {STATE_FILE} is unreadable (hash); it is never edited by hand"
            ))
        })?;
        Ok(hash)
    }
}

fn state_path(key_dir: &Path) -> PathBuf {
    key_dir.join(STATE_FILE)
}

/// The state file's content, if the sealer ever signed (or an administrator
/// accepted) a head.
pub fn read(key_dir: &Path) -> Result<Option<SealerState>, BrokerError> {
    let path = state_path(key_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BrokerError::io(format!("read {}", path.display()), e)),
    };
    let state: SealerState = serde_json::from_str(&text).map_err(|_| {
        BrokerError::Config(format!(
            "records sealer state {} is unreadable; it is never edited by hand",
            path.display()
        ))
    })?;
    state.hash()?;
    Ok(Some(state))
}

/// Processes of one broker sharing a key directory take turns writing.
static ONE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Remembers a signed head: never moves the state backwards (another node
/// sharing the key directory may have signed a later head meanwhile).
pub fn advance(key_dir: &Path, state: &SealerState) -> Result<(), BrokerError> {
    let _turn = ONE_WRITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // A head an administrator accepted is replaced by its checkpoint once
    // signed; otherwise only a later head replaces the one remembered.
    if read(key_dir)?
        .is_some_and(|s| s.seq > state.seq || (s.seq == state.seq && s.checkpoint.is_some()))
    {
        return Ok(());
    }
    replace(key_dir, state)
}

/// Replaces the state whatever it was (an administrator's acceptance).
pub fn accept(key_dir: &Path, state: &SealerState) -> Result<(), BrokerError> {
    let _turn = ONE_WRITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    replace(key_dir, state)
}

/// Written to a temporary file, fsynced, renamed over the state file and the
/// directory fsynced: a crash leaves the old state or the new one.
fn replace(key_dir: &Path, state: &SealerState) -> Result<(), BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_path(key_dir);
    let tmp = key_dir.join(format!(
        "{STATE_FILE}.{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let text = serde_json::to_string(state).map_err(|e| BrokerError::encoding("JSON", e))?;
    let io = |what: &str, p: &Path, e| BrokerError::io(format!("{what} {}", p.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp, e));
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
    std::fs::File::open(key_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io("sync", key_dir, e))?;
    Ok(())
}

/// A purge cut that took a head the sealer signed within the retention
/// period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexpiredPurge {
    /// The signed head's sequence (at or before the cut).
    pub signed: u64,
    /// When it was signed, as the state file has it.
    pub signed_at: String,
}

/// Whether a purge cut at `cut_seq` took the head `state` remembers while
/// that head was younger than the retention period (`cutoff`: the latest
/// time a purge may take, [`crate::records::retention_cutoff`]). A purge
/// takes nothing younger, so such a cut and the purge record confirming it
/// are forged: a database writer deleted what was signed and would have the
/// rest checked on from the cut. The sealer refuses on it and `records
/// verify` reports it. A head accepted but not signed yet, or whose time
/// does not parse, is not judged here.
pub fn unexpired_purge(
    state: &SealerState,
    cut_seq: u64,
    cutoff: time::OffsetDateTime,
) -> Option<UnexpiredPurge> {
    if cut_seq == 0 || state.seq > cut_seq {
        return None;
    }
    let signed_at = &state.checkpoint.as_ref()?.at;
    let at = time::OffsetDateTime::parse(signed_at, &time::format_description::well_known::Rfc3339)
        .ok()?;
    (at > cutoff).then(|| UnexpiredPurge {
        signed: state.seq,
        signed_at: signed_at.clone(),
    })
}

/// What the sealer found when the stored chain does not extend the head it
/// signed last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// No state file, but the database holds checkpoints: the file was
    /// removed, or the database was restored or copied onto this host.
    #[error("the sealer's state file is missing but the database holds checkpoints (state removed, or database restored from elsewhere)")]
    StateMissing,
    /// The stored head is behind the head the sealer signed: the tail was
    /// cut, or an older backup was restored.
    #[error("the database ends at {head} but the sealer signed up to {signed} (tail truncated or an older backup restored)")]
    Rewound {
        /// What the sealer signed.
        signed: u64,
        /// Where the database ends.
        head: u64,
    },
    /// The record the sealer signed last is gone or has another chain hash:
    /// history up to it was rewritten and re-chained, or another database's
    /// history was restored.
    #[error("the chain at {signed} is not the head the sealer signed (rewritten and re-chained, or another backup restored)")]
    Rechained {
        /// What the sealer signed.
        signed: u64,
    },
    /// The checkpoint the sealer signed last is no longer stored (deleted).
    #[error(
        "the checkpoint the sealer signed at {checkpoint} is missing from the database (deleted)"
    )]
    CheckpointMissing {
        /// Its sequence.
        checkpoint: u64,
    },
    /// The chain from the signed head to the new one fails verification.
    #[error("the chain after the signed head fails: {0}")]
    Chain(FailureKind),
    /// The record this process committed was changed behind its writer.
    #[error("the stored record differs from what was committed")]
    CommittedRewritten,
    /// The records were purged past the head the sealer signed while that
    /// head was younger than the retention period: no lawful purge reaches
    /// a record signed so recently (a forged purge record and cut).
    #[error("records up to {signed} were purged though the sealer signed them within the retention period")]
    PurgedUnexpired {
        /// What the sealer signed.
        signed: u64,
    },
}

impl Finding {
    /// The stable snake_case name (metric label, JSON).
    pub fn name(&self) -> &'static str {
        match self {
            Finding::StateMissing => "state_missing",
            Finding::Rewound { .. } => "rewound",
            Finding::Rechained { .. } => "rechained",
            Finding::CheckpointMissing { .. } => "checkpoint_missing",
            Finding::Chain(_) => "chain_broken",
            Finding::CommittedRewritten => "committed_rewritten",
            Finding::PurgedUnexpired { .. } => "purged_unexpired",
        }
    }
}

/// Why the sealer refuses: the first bad sequence number and the finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("sequence {seq}: {finding}")]
pub struct Refusal {
    /// First bad sequence number (as far as the sealer can tell).
    pub seq: u64,
    /// What it found.
    pub finding: Finding,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_never_moves_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let at = |seq| {
            SealerState::signed(
                &Checkpoint::sign(
                    seq,
                    [seq as u8; 32],
                    "2026-12-06T00:00:00.000000Z".into(),
                    &key,
                ),
                None,
            )
        };
        advance(dir.path(), &at(5)).expect("write");
        advance(dir.path(), &at(3)).expect("write");
        assert_eq!(read(dir.path()).expect("read").map(|s| s.seq), Some(5));
        accept(dir.path(), &at(3)).expect("accept");
        assert_eq!(read(dir.path()).expect("read").map(|s| s.seq), Some(3));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_purge_never_takes_a_head_signed_within_the_retention_period() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let signed = |seq, at: &str| {
            SealerState::signed(&Checkpoint::sign(seq, [1; 32], at.into(), &key), None)
        };
        let cutoff = time::macros::datetime!(2019-12-07 10:00 UTC);
        let young = signed(20, "2026-12-07T10:00:00.000000Z");
        let forged = Some(UnexpiredPurge {
            signed: 20,
            signed_at: "2026-12-07T10:00:00.000000Z".into(),
        });
        // Cut at the signed head or past it: forged.
        assert_eq!(unexpired_purge(&young, 20, cutoff), forged);
        assert_eq!(unexpired_purge(&young, 25, cutoff), forged);
        // Cut before it, or no purge at all: the purge took nothing signed.
        assert_eq!(unexpired_purge(&young, 19, cutoff), None);
        assert_eq!(unexpired_purge(&young, 0, cutoff), None);
        // Signed before the retention period began (or at its very start).
        let old = signed(20, "2019-12-07T09:59:59.999999Z");
        assert_eq!(unexpired_purge(&old, 25, cutoff), None);
        let at_cutoff = signed(20, "2019-12-07T10:00:00.000000Z");
        assert_eq!(unexpired_purge(&at_cutoff, 20, cutoff), None);
        // Accepted by an administrator, not signed: nothing to date it by.
        let accepted = SealerState {
            checkpoint: None,
            ..young.clone()
        };
        assert_eq!(unexpired_purge(&accepted, 20, cutoff), None);
        // The period the configuration keeps decides the cutoff.
        let now = time::macros::datetime!(2026-12-07 12:00 UTC);
        let cutoff = crate::records::purge::retention_cutoff(now, 7);
        assert_eq!(cutoff, time::macros::datetime!(2019-12-07 12:00 UTC));
        assert_eq!(unexpired_purge(&young, 20, cutoff), forged);
    }
}
