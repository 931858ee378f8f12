//! Every org is a witness of the broker's provision records (R16): the
//! checkpoints a profile has seen, kept beside its config, and the check
//! that the broker's current log still extends them.
//!
//! Every answer carries the broker's latest signed checkpoint. A
//! [`CheckpointBook`] keeps, per profile, the latest one and the first one
//! seen each day (at most [`MAX_KEPT`]) in
//! `$KAKEHASHI_HOME/checkpoints/<profile>.json` (mode 0600). [`witness`]
//! asks the broker for the leaf hashes from the oldest kept checkpoint not
//! yet witnessed to its latest checkpoint (`GET /v1/record-chain`) and
//! chains them: each kept head must be reproduced on the way, and the
//! broker's current signed head at the end. A history rewritten before a
//! checkpoint the org has seen cannot pass, even when the broker re-signed
//! it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use kakehashi_interfaces::audit::{Hash, TrustedKeys};
use kakehashi_interfaces::records::{RecordChain, RecordKeySet, SignedCheckpoint};
use kakehashi_interfaces::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::ClientError;

/// Most checkpoints a profile keeps: the latest and one a day for about a year.
pub const MAX_KEPT: usize = 400;

/// One kept checkpoint and the UTC day it was first seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptCheckpoint {
    /// `YYYY-MM-DD`, UTC.
    pub seen_on: String,
    /// The checkpoint as the broker signed it.
    pub checkpoint: SignedCheckpoint,
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kept {
    /// Kept checkpoints, by sequence.
    #[serde(default)]
    pub checkpoints: Vec<KeptCheckpoint>,
    /// The sequence of the last checkpoint a witness run proved the log
    /// extends (every kept one before it was proven to lead to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witnessed_seq: Option<u64>,
}

impl Kept {
    /// Adds a checkpoint (a repeat changes nothing) and drops what the
    /// bounds no longer need: the latest, the first of each day and the
    /// last witnessed one stay. Returns whether it changed anything.
    pub fn add(&mut self, checkpoint: SignedCheckpoint, today: &str) -> bool {
        if self.checkpoints.iter().any(|k| k.checkpoint == checkpoint) {
            return false;
        }
        self.checkpoints.push(KeptCheckpoint {
            seen_on: today.to_string(),
            checkpoint,
        });
        self.prune();
        true
    }

    fn prune(&mut self) {
        self.checkpoints.sort_by_key(|k| k.checkpoint.seq);
        let latest = self.checkpoints.last().map(|k| k.checkpoint.seq);
        let witnessed = self.witnessed_seq;
        let mut days = std::collections::BTreeSet::new();
        let mut kept: Vec<KeptCheckpoint> = Vec::new();
        for k in std::mem::take(&mut self.checkpoints) {
            let seq = Some(k.checkpoint.seq);
            // Two different heads for one sequence are both kept: they are
            // the broker's own signed contradiction.
            let conflicting = kept.iter().any(|o| o.checkpoint.seq == k.checkpoint.seq);
            if days.insert(k.seen_on.clone()) || seq == latest || seq == witnessed || conflicting {
                kept.push(k);
            }
        }
        let excess = kept.len().saturating_sub(MAX_KEPT);
        kept.drain(..excess);
        self.checkpoints = kept;
    }

    /// The latest kept sequence.
    pub fn latest_seq(&self) -> Option<u64> {
        self.checkpoints.last().map(|k| k.checkpoint.seq)
    }
}

/// The checkpoints one profile has seen, kept in a file beside the config.
#[derive(Debug)]
pub struct CheckpointBook {
    path: PathBuf,
    pinned: TrustedKeys,
    /// The highest sequence written, so repeats cost no file access.
    seen: AtomicU64,
    write: Mutex<()>,
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::config(format!(
        "cannot {what} checkpoint file {}: {e}",
        path.display()
    ))
}

/// Today's UTC date, `YYYY-MM-DD`.
fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

impl CheckpointBook {
    /// The book of `profile` under the config directory `dir`. `pinned` are
    /// the profile's pinned checkpoint keys: when there are any, only
    /// checkpoints they signed are kept.
    pub fn open(dir: &Path, profile: &str, pinned: TrustedKeys) -> CheckpointBook {
        let path = dir.join("checkpoints").join(format!("{profile}.json"));
        CheckpointBook {
            path,
            pinned,
            seen: AtomicU64::new(0),
            write: Mutex::new(()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what is kept (nothing when the file does not exist yet).
    pub fn load(&self) -> Result<Kept, ClientError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io_error(&self.path, "read", format!("not a checkpoint file ({e})"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kept::default()),
            Err(e) => Err(io_error(&self.path, "read", e)),
        }
    }

    /// Writes atomically (temporary file, then rename), mode 0600.
    pub fn save(&self, kept: &Kept) -> Result<(), ClientError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(&self.path, "create the folder of", e))?;
        let text =
            serde_json::to_vec_pretty(kept).map_err(|e| io_error(&self.path, "encode", e))?;
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, "write", e))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| io_error(&self.path, "write", e))
    }

    /// Keeps a checkpoint an answer carried. Fails only when the file
    /// cannot be written; a checkpoint the pinned keys did not sign is not
    /// kept.
    pub fn observe(&self, checkpoint: &SignedCheckpoint) -> Result<(), ClientError> {
        if checkpoint.seq <= self.seen.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.pinned.is_empty() && checkpoint.verify(&self.pinned).is_err() {
            return Ok(());
        }
        let _one_writer = self.write.lock().map_err(|_| {
            ClientError::config("the checkpoint file's lock was poisoned".to_string())
        })?;
        let mut kept = self.load()?;
        if kept.add(checkpoint.clone(), &today()) {
            self.save(&kept)?;
        }
        self.seen.fetch_max(checkpoint.seq, Ordering::AcqRel);
        Ok(())
    }
}

/// What a witness run found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum WitnessReport {
    /// The broker's current log extends every kept checkpoint.
    Consistent {
        /// Kept checkpoints checked.
        checked: usize,
        /// The oldest kept sequence checked from.
        from_seq: u64,
        /// The broker's current signed checkpoint, now kept.
        current: SignedCheckpoint,
        /// Leaf hashes chained.
        links: u64,
    },
    /// The log does not extend a kept checkpoint.
    Mismatch {
        /// The kept checkpoint the log contradicts.
        kept_seq: u64,
        /// When it was first seen.
        seen_on: String,
        /// What was found.
        finding: String,
    },
}

/// Holds the broker's current log against the kept checkpoints: fetches
/// the chain from the oldest kept checkpoint not yet witnessed to the
/// broker's latest signed checkpoint, reproduces every kept head on the
/// way and the signed head at the end, and on success keeps the current
/// checkpoint as witnessed. `pinned` must hold the broker's checkpoint keys.
pub async fn witness(
    client: &Client,
    book: &CheckpointBook,
    pinned: &TrustedKeys,
) -> Result<WitnessReport, ClientError> {
    let mut kept = book.load()?;
    let start_seq = kept
        .witnessed_seq
        .filter(|w| kept.checkpoints.iter().any(|k| k.checkpoint.seq == *w))
        .or_else(|| kept.checkpoints.first().map(|k| k.checkpoint.seq));
    let mismatch = |k: &KeptCheckpoint, finding: String| WitnessReport::Mismatch {
        kept_seq: k.checkpoint.seq,
        seen_on: k.seen_on.clone(),
        finding,
    };
    // A kept checkpoint the pinned keys did not sign proves nothing.
    for k in &kept.checkpoints {
        if let Err(e) = k.checkpoint.verify(pinned) {
            return Ok(mismatch(
                k,
                format!("the kept checkpoint does not verify with the pinned keys: {e}"),
            ));
        }
    }
    let to_check: Vec<KeptCheckpoint> = kept
        .checkpoints
        .iter()
        .filter(|k| start_seq.is_some_and(|s| k.checkpoint.seq >= s))
        .cloned()
        .collect();
    let Some(first) = to_check.first().cloned() else {
        return Err(ClientError::config(
            "no checkpoint kept for this profile yet: make a query first (every answer carries one)"
                .to_string(),
        ));
    };
    let mut seq = first.checkpoint.seq;
    let mut head: Hash = first.checkpoint.head_hash.0;
    let mut links = 0u64;
    let mut next = 1;
    while let Some(k) = to_check.get(next).filter(|k| k.checkpoint.seq == seq) {
        if k.checkpoint.head_hash != first.checkpoint.head_hash {
            return Ok(mismatch(
                k,
                format!("the broker signed two different heads for sequence {seq}"),
            ));
        }
        next += 1;
    }
    let current = loop {
        let chain: RecordChain = match client.record_chain(seq, None).await {
            Ok(chain) => chain,
            // The broker has no signed log reaching what this profile saw
            // signed: cut, replaced by an older backup, or emptied.
            Err(ClientError::Refused {
                code: ErrorCode::InvalidInput | ErrorCode::NotFound,
                message,
                ..
            }) => {
                return Ok(mismatch(
                    &first,
                    format!("the broker cannot show its records from sequence {seq}, which this profile saw signed: {message}"),
                ))
            }
            Err(e) => return Err(e),
        };
        let current = chain.checkpoint.clone();
        if let Err(e) = current.verify(pinned) {
            return Ok(mismatch(
                &first,
                format!(
                    "the broker's current checkpoint {} is not signed by a pinned key: {}",
                    current.seq, e
                ),
            ));
        }
        if current.seq < seq {
            return Ok(mismatch(
                &first,
                format!(
                    "the broker's current checkpoint {} precedes the kept one (the log was cut)",
                    current.seq
                ),
            ));
        }
        if chain.from != seq {
            return Ok(mismatch(
                &first,
                format!("the broker answered from {} instead of {seq}", chain.from),
            ));
        }
        for link in &chain.links {
            if link.seq != seq + 1 {
                return Ok(mismatch(
                    &first,
                    format!("the broker's chain skips from {seq} to {}", link.seq),
                ));
            }
            head = kakehashi_interfaces::audit::chain_hash(&head, &link.leaf.0);
            seq = link.seq;
            links += 1;
            while let Some(k) = to_check.get(next).filter(|k| k.checkpoint.seq <= seq) {
                if k.checkpoint.seq == seq && k.checkpoint.head_hash.0 != head {
                    return Ok(mismatch(
                        k,
                        format!(
                            "the broker's log no longer leads to this checkpoint's head at sequence {seq}: records at or before {seq} were rewritten"
                        ),
                    ));
                }
                next += 1;
            }
        }
        if seq >= current.seq || chain.links.is_empty() {
            break current;
        }
    };
    if seq != current.seq {
        return Ok(mismatch(
            &first,
            format!(
                "the broker's chain ends at {seq}, short of its checkpoint {}",
                current.seq
            ),
        ));
    }
    if let Some(k) = to_check.get(next) {
        return Ok(mismatch(
            k,
            format!(
                "the broker's log ends at {} before this kept checkpoint (records were cut)",
                current.seq
            ),
        ));
    }
    if head != current.head_hash.0 {
        return Ok(mismatch(
            &to_check[next - 1],
            format!(
                "from the kept head at {} the broker's records do not reproduce its current signed head at {}: records at or before {} were rewritten and re-signed",
                first.checkpoint.seq, current.seq, to_check[next - 1].checkpoint.seq
            ),
        ));
    }
    kept.add(current.clone(), &today());
    kept.witnessed_seq = Some(current.seq);
    kept.prune();
    book.save(&kept)?;
    Ok(WitnessReport::Consistent {
        checked: to_check.len(),
        from_seq: first.checkpoint.seq,
        current,
        links,
    })
}

impl Client {
    /// `GET /v1/record-keys`: the keys the broker signs record checkpoints with.
    pub async fn record_keys(&self) -> Result<RecordKeySet, ClientError> {
        self.get_json("/v1/record-keys").await
    }

    /// `GET /v1/record-chain?from=A[&to=B]`: leaf hashes after `from` and the
    /// latest signed checkpoint.
    pub async fn record_chain(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> Result<RecordChain, ClientError> {
        let path = match to {
            Some(to) => format!("/v1/record-chain?from={from}&to={to}"),
            None => format!("/v1/record-chain?from={from}"),
        };
        self.get_json(&path).await
    }

    /// Keeps the checkpoint of every answer from now on in `book`.
    pub fn keep_checkpoints(&self, book: std::sync::Arc<CheckpointBook>) {
        let _ = self.inner.caches.checkpoints.set(book);
    }

    /// Passes an answer's checkpoint to the book, if one is kept. A file
    /// that cannot be written does not fail the answer (it was recorded).
    pub(crate) fn observe_checkpoint(&self, checkpoint: Option<&SignedCheckpoint>) {
        if let (Some(book), Some(cp)) = (self.inner.caches.checkpoints.get(), checkpoint) {
            if let Err(e) = book.observe(cp) {
                warn_once(&e);
            }
        }
    }
}

/// A checkpoint file that cannot be written is reported on standard error,
/// once per process (the answers themselves are not affected).
fn warn_once(e: &ClientError) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("warning: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use kakehashi_interfaces::audit::Checkpoint;

    fn cp(seq: u64, head: u8) -> SignedCheckpoint {
        let key = SigningKey::from_bytes(&[7; 32]);
        SignedCheckpoint::from_checkpoint(&Checkpoint::sign(seq, [head; 32], "t".into(), &key))
            .unwrap()
    }

    #[test]
    fn keeps_the_latest_and_one_a_day() {
        let mut kept = Kept::default();
        assert!(kept.add(cp(1, 1), "2026-01-01"));
        assert!(kept.add(cp(2, 2), "2026-01-01"));
        assert!(kept.add(cp(3, 3), "2026-01-01"));
        assert!(!kept.add(cp(3, 3), "2026-01-01"));
        let seqs = |k: &Kept| {
            k.checkpoints
                .iter()
                .map(|c| c.checkpoint.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&kept), vec![1, 3]);
        kept.add(cp(4, 4), "2026-01-02");
        kept.add(cp(5, 5), "2026-01-02");
        assert_eq!(seqs(&kept), vec![1, 4, 5]);
        // A second head for a kept sequence is kept too: a contradiction.
        kept.add(cp(5, 9), "2026-01-02");
        assert_eq!(seqs(&kept), vec![1, 4, 5, 5]);
        for day in 0..(MAX_KEPT as u64 + 10) {
            kept.add(cp(100 + day, 1), &format!("d{day:05}"));
        }
        assert_eq!(kept.checkpoints.len(), MAX_KEPT);
        assert_eq!(kept.latest_seq(), Some(100 + MAX_KEPT as u64 + 9));
    }
}
