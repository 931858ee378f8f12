//! Verification of the stored chain against signed checkpoints, and the
//! sealer's keys in the key directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kakehashi_interfaces::audit::{
    ChainFailure, ChainSummary, ChainVerifier, Checkpoint, FailureKind, Hash, TrustedKeys,
};
use serde::Serialize;

use super::db::{to_i64, CheckpointRow, Cursor};
use crate::error::BrokerError;
use crate::store::record_source::RecordSource;
use crate::store::Pools;
use crate::store::Snapshot;

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
    /// Where to show how far the walk has come.
    pub progress: Option<Arc<WalkProgress>>,
}

/// How far a long pass over the records has come (a walk, a purge), for a
/// progress display: records done of the records it will do.
#[derive(Debug, Default)]
pub struct WalkProgress {
    /// Records done.
    pub done: AtomicU64,
    /// Records to do.
    pub total: AtomicU64,
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
    let mut snap = pools.backend().snapshot().await?;
    walk_in(pools, &mut snap, keys, plan).await
}

async fn walk_in(
    pools: &Pools,
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
    let cut_seq = snap.head().await?.cut_seq;
    if let Some(p) = &plan.progress {
        p.total.store(
            plan.end_seq.saturating_sub(plan.start_seq),
            Ordering::Relaxed,
        );
    }
    let mut records = RecordSource::open(pools, lo, to_i64(plan.end_seq), cut_seq);
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
        let row_seq = row.seq;
        // Rows come from a buffered page without yielding; hashing thousands
        // of them in one poll would hold a request worker for milliseconds
        // (the checkpoint sealer walks the new tail every few seconds).
        if seq % YIELD_EVERY_ROWS == 0 {
            if let Some(p) = &plan.progress {
                p.done
                    .store(seq.saturating_sub(plan.start_seq), Ordering::Relaxed);
            }
            tokio::task::yield_now().await;
        }
        let (record, stored) = match row.into_record() {
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
        while pending.as_ref().is_some_and(|cp| cp.seq <= row_seq) {
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
    let mut snap = pools.backend().snapshot().await?;
    let head = snap.head().await?;
    let walk = walk_in(
        pools,
        &mut snap,
        keys.clone(),
        WalkPlan {
            start_seq: head.cut_seq,
            start_hash: head.cut_hash,
            end_seq: head.seq,
            whole_store: true,
            capture: None,
            progress: None,
        },
    )
    .await?;
    Ok(walk.verdict)
}

/// What `records verify` holds the database against besides its own chain.
#[derive(Debug, Clone)]
pub struct EvidenceOptions {
    /// The checkpoint log to hold the database against, if any.
    pub checkpoint_log: Option<PathBuf>,
    /// Every record older than this must be covered by a checkpoint signed
    /// by a trusted key (twice the checkpoint interval).
    pub max_unsealed_age: std::time::Duration,
    /// The time to measure ages from.
    pub now: time::OffsetDateTime,
    /// Years records are kept (`[records] retention_years`): a purge cut at
    /// or past a head the sealer signed within this period is forged.
    pub retention_years: u32,
    /// The TSA certificate the checkpoints' time-stamp tokens must verify
    /// against. Without it each token's message imprint is still checked
    /// (a token moved from another checkpoint fails either way).
    pub tsa_cert: Option<kakehashi_interfaces::audit::TsaCertificate>,
    /// Where to show how far the walk over the chain has come.
    pub progress: Option<Arc<WalkProgress>>,
}

/// Where a signed head that the database no longer matches was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The sealer's state file in the key directory.
    SealerState,
    /// The checkpoint log (`[records] checkpoint_log`).
    CheckpointLog,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::SealerState => "the sealer's state file",
            Source::CheckpointLog => "the checkpoint log",
        })
    }
}

/// What kind of damage `records verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Damage {
    /// The stored chain fails on its own (edited, deleted, inserted,
    /// swapped, truncated, or a checkpoint forged or signed by an untrusted key).
    #[error("{failure}")]
    Chain {
        /// What the chain walk found.
        failure: FailureKind,
    },
    /// A record older than twice the checkpoint interval is not covered by
    /// a checkpoint signed by a trusted key: checkpoints are missing.
    #[error("record of {recorded_at} is not covered by a checkpoint signed by a trusted key (checkpoints missing or deleted)")]
    Unsealed {
        /// When it was recorded.
        recorded_at: String,
    },
    /// The sealer's state file is gone while checkpoints are stored.
    #[error("the sealer's state file is missing but the database holds checkpoints (state removed, or database restored from elsewhere)")]
    StateMissing,
    /// A head was signed beyond where the database ends.
    #[error("{kept_in} has a head signed at {signed} but the database ends at {head} (tail truncated or an older backup restored)")]
    Rewound {
        /// Where the evidence was kept.
        kept_in: Source,
        /// The signed sequence.
        signed: u64,
        /// The stored head.
        head: u64,
    },
    /// The chain reproduces itself but not the head that was signed: the
    /// records from here were rewritten and re-chained.
    #[error("records from here do not reproduce the head signed at {checkpoint} in {kept_in} (rewritten and re-chained)")]
    Rechained {
        /// Where the evidence was kept.
        kept_in: Source,
        /// The signed sequence.
        checkpoint: u64,
    },
    /// A signed checkpoint is no longer in the database.
    #[error("the checkpoint at {checkpoint} in {kept_in} is missing from the database (deleted)")]
    CheckpointMissing {
        /// Where the evidence was kept.
        kept_in: Source,
        /// Its sequence.
        checkpoint: u64,
    },
    /// The records were purged up to or past the head the sealer's state
    /// file names, though it was signed within the retention period: no
    /// lawful purge takes it, so the cut and its purge record are forged.
    #[error("records up to {cut} were purged, but the sealer's state file has the head at {signed} signed at {signed_at}, within the {retention_years}-year retention period (purge record and cut forged)")]
    PurgedUnexpired {
        /// The signed head's sequence.
        signed: u64,
        /// When it was signed.
        signed_at: String,
        /// The purge cut.
        cut: u64,
        /// The retention period held against, in years.
        retention_years: u32,
    },
    /// A checkpoint's time-stamp token is malformed, belongs to another
    /// checkpoint, or (with a TSA certificate) is not signed by that TSA.
    #[error("the time-stamp token of checkpoint {checkpoint} fails: {reason}")]
    Timestamp {
        /// The checkpoint's sequence.
        checkpoint: u64,
        /// What is wrong with the token.
        reason: String,
    },
    /// A line of the checkpoint log is unreadable, badly signed or signed
    /// by an untrusted key.
    #[error("line {line} of the checkpoint log is not a checkpoint signed by a trusted key (log tampered with)")]
    LogForged {
        /// Its line number (from 1).
        line: u64,
    },
}

impl Damage {
    /// The stable snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Damage::Chain { .. } => "chain",
            Damage::Unsealed { .. } => "unsealed",
            Damage::StateMissing => "state_missing",
            Damage::Rewound { .. } => "rewound",
            Damage::Rechained { .. } => "rechained",
            Damage::CheckpointMissing { .. } => "checkpoint_missing",
            Damage::PurgedUnexpired { .. } => "purged_unexpired",
            Damage::LogForged { .. } => "log_forged",
            Damage::Timestamp { .. } => "timestamp",
        }
    }
}

/// The first bad sequence number and the damage there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("sequence {seq}: {damage}")]
pub struct EvidenceFailure {
    /// First bad sequence number (as far as the evidence tells).
    pub seq: u64,
    /// What is wrong.
    pub damage: Damage,
}

/// What a successful `records verify` covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceSummary {
    /// The chain and its checkpoints.
    pub chain: ChainSummary,
    /// The head the sealer's state file names, if any.
    pub sealer_state_seq: Option<u64>,
    /// Checkpoint-log entries held against the database, if a log was given.
    pub checkpoint_log_entries: Option<u64>,
    /// The checkpoints' time-stamp tokens.
    pub timestamps: TimestampSummary,
}

/// What `records verify` found of the checkpoints' time-stamp tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimestampSummary {
    /// Checkpoints whose token's imprint matched (and, with a TSA
    /// certificate, whose TSA signature verified).
    pub stamped: u64,
    /// Whether the tokens were verified against a TSA certificate.
    pub verified_against_tsa: bool,
    /// The TSA's time of the earliest and the latest checkpoint stamped.
    pub first_gen_time: Option<String>,
    /// See `first_gen_time`.
    pub last_gen_time: Option<String>,
    /// Checkpoints without a token (signed while the TSA failed, or before
    /// one was configured): not a failure, reported.
    pub missing: u64,
    /// The first few of them.
    pub missing_seqs: Vec<u64>,
}

/// Sequences of checkpoints without a token listed by name.
const MISSING_LISTED: usize = 20;

/// Checks the time-stamp token of every stored checkpoint after `cut_seq`:
/// the first that fails, or what they show.
async fn check_timestamps(
    snap: &mut Snapshot,
    cut_seq: u64,
    tsa: Option<&kakehashi_interfaces::audit::TsaCertificate>,
) -> Result<Result<TimestampSummary, EvidenceFailure>, BrokerError> {
    use kakehashi_interfaces::audit as a;
    let mut summary = TimestampSummary {
        verified_against_tsa: tsa.is_some(),
        ..TimestampSummary::default()
    };
    let mut rows = Cursor::<CheckpointRow>::new(to_i64(cut_seq + 1), i64::MAX);
    while let Some(row) = rows.next(snap).await? {
        let cp = row.to_checkpoint();
        let Some(token) = &cp.timestamp else {
            summary.missing += 1;
            if summary.missing_seqs.len() < MISSING_LISTED {
                summary.missing_seqs.push(cp.seq);
            }
            continue;
        };
        let digest = a::checkpoint_digest(&cp);
        let checked = match tsa {
            Some(cert) => a::verify_token(token, &digest, cert),
            None => a::check_imprint(token, &digest),
        };
        match checked {
            Ok(info) => {
                summary.stamped += 1;
                if summary.first_gen_time.is_none() {
                    summary.first_gen_time = Some(info.gen_time.clone());
                }
                summary.last_gen_time = Some(info.gen_time);
            }
            Err(e) => {
                return Ok(Err(EvidenceFailure {
                    seq: cp.seq,
                    damage: Damage::Timestamp {
                        checkpoint: cp.seq,
                        reason: e.to_string(),
                    },
                }))
            }
        }
    }
    Ok(Ok(summary))
}

/// The result of `records verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum EvidenceVerdict {
    /// The chain verifies, every record older than twice the checkpoint
    /// interval is sealed by a trusted key, and the database agrees with the
    /// sealer's state and the checkpoint log.
    Intact(EvidenceSummary),
    /// The first bad sequence and what is wrong there.
    Broken(EvidenceFailure),
}

fn broken(seq: u64, damage: Damage) -> Option<EvidenceFailure> {
    Some(EvidenceFailure { seq, damage })
}

/// Log lines held against the database per query.
const LOG_CHUNK: usize = 500;

/// Verifies the store as [`verify_store`] does, and fails closed beyond it:
/// a record older than `max_unsealed_age` not covered by a trusted
/// checkpoint, a sealer state file (in `key_dir`) or checkpoint log whose
/// signed heads the database no longer reproduces or whose checkpoints it
/// no longer holds, a missing state file while checkpoints are stored, and
/// a purge cut at or past a head the state file names as signed within the
/// retention period, are each named by the first bad sequence and the kind
/// of damage.
pub async fn verify_evidence(
    pools: &Pools,
    keys: &TrustedKeys,
    key_dir: &Path,
    options: &EvidenceOptions,
) -> Result<EvidenceVerdict, BrokerError> {
    // The outside evidence is read before the snapshot, so everything it
    // names was committed before the snapshot began.
    let state = super::sealer_state::read(key_dir)?;
    let log = match &options.checkpoint_log {
        Some(path) => Some((path, super::checkpoint_log::len(path)?)),
        None => None,
    };
    let mut snap = pools.backend().snapshot().await?;
    let head = snap.head().await?;
    let walk = walk_in(
        pools,
        &mut snap,
        keys.clone(),
        WalkPlan {
            start_seq: head.cut_seq,
            start_hash: head.cut_hash,
            end_seq: head.seq,
            whole_store: true,
            capture: None,
            progress: options.progress.clone(),
        },
    )
    .await?;
    let chain = match walk.verdict {
        Verdict::Broken(f) => {
            return Ok(EvidenceVerdict::Broken(EvidenceFailure {
                seq: f.seq,
                damage: Damage::Chain { failure: f.kind },
            }))
        }
        Verdict::Intact(summary) => summary,
    };
    let mut failures: Vec<EvidenceFailure> = Vec::new();

    // The sealer's state file.
    match &state {
        None => {
            if snap.any_checkpoint().await? {
                failures.extend(broken(head.cut_seq + 1, Damage::StateMissing));
            }
        }
        Some(s) => {
            let signed = s.hash()?;
            let source = Source::SealerState;
            let cutoff = super::purge::retention_cutoff(options.now, options.retention_years);
            let forged = super::sealer_state::unexpired_purge(s, head.cut_seq, cutoff);
            let found = if s.seq > head.seq {
                broken(
                    head.seq + 1,
                    Damage::Rewound {
                        kept_in: source,
                        signed: s.seq,
                        head: head.seq,
                    },
                )
            } else if let Some(forged) = forged {
                broken(
                    forged.signed,
                    Damage::PurgedUnexpired {
                        signed: forged.signed,
                        signed_at: forged.signed_at,
                        cut: head.cut_seq,
                        retention_years: options.retention_years,
                    },
                )
            } else if s.seq == head.cut_seq && s.seq > 0 {
                (signed != head.cut_hash).then_some(EvidenceFailure {
                    seq: s.seq,
                    damage: Damage::Rechained {
                        kept_in: source,
                        checkpoint: s.seq,
                    },
                })
            } else if s.seq > head.cut_seq {
                let stored = snap.stored_hashes(&[s.seq]).await?;
                if stored.first().map(|(_, h)| h.as_slice()) != Some(signed.as_slice()) {
                    let good = snap.last_checkpoint_before(s.seq).await?.max(head.cut_seq);
                    broken(
                        good + 1,
                        Damage::Rechained {
                            kept_in: source,
                            checkpoint: s.seq,
                        },
                    )
                } else if s.checkpoint.is_some()
                    && snap.checkpoint_hashes(&[s.seq]).await?.is_empty()
                {
                    broken(
                        s.seq,
                        Damage::CheckpointMissing {
                            kept_in: source,
                            checkpoint: s.seq,
                        },
                    )
                } else {
                    None
                }
            } else {
                None
            };
            failures.extend(found);
        }
    }

    // The checkpoint log.
    let mut log_entries = None;
    if let Some((path, len)) = log {
        let mut reader = match len {
            Some(len) => Some(super::checkpoint_log::Reader::open(path, len)?),
            None if chain.checkpoints > 0 => {
                return Err(BrokerError::Config(format!(
                    "the checkpoint log {} does not exist, but checkpoints are stored",
                    path.display()
                )))
            }
            None => None,
        };
        let mut entries = 0u64;
        let mut good = head.cut_seq;
        'log: while let Some(lines) = reader.as_mut() {
            let mut chunk: Vec<(u64, Checkpoint)> = Vec::with_capacity(LOG_CHUNK);
            let mut done = false;
            while chunk.len() < LOG_CHUNK {
                match lines.next_line()? {
                    None => {
                        done = true;
                        break;
                    }
                    Some((line, parsed)) => {
                        let Some(cp) = parsed.filter(|cp| cp.verify(keys).is_ok()) else {
                            failures.extend(broken(good + 1, Damage::LogForged { line }));
                            break 'log;
                        };
                        entries += 1;
                        // Records (and checkpoints) at or before the purge
                        // cut are gone by design.
                        if cp.seq > head.cut_seq {
                            chunk.push((line, cp));
                        }
                    }
                }
            }
            let seqs: Vec<u64> = chunk.iter().map(|(_, cp)| cp.seq).collect();
            let stored: std::collections::HashMap<i64, Vec<u8>> =
                snap.stored_hashes(&seqs).await?.into_iter().collect();
            let sealed: std::collections::HashSet<i64> = snap
                .checkpoint_hashes(&seqs)
                .await?
                .into_iter()
                .map(|(seq, _)| seq)
                .collect();
            let source = Source::CheckpointLog;
            for (_, cp) in &chunk {
                let seq = to_i64(cp.seq);
                if cp.seq > head.seq {
                    failures.extend(broken(
                        head.seq + 1,
                        Damage::Rewound {
                            kept_in: source,
                            signed: cp.seq,
                            head: head.seq,
                        },
                    ));
                    break 'log;
                }
                if stored.get(&seq).map(Vec::as_slice) != Some(cp.head_hash.as_slice()) {
                    let before = snap.last_checkpoint_before(cp.seq).await?;
                    failures.extend(broken(
                        good.max(before) + 1,
                        Damage::Rechained {
                            kept_in: source,
                            checkpoint: cp.seq,
                        },
                    ));
                    break 'log;
                }
                if !sealed.contains(&seq) {
                    failures.extend(broken(
                        cp.seq,
                        Damage::CheckpointMissing {
                            kept_in: source,
                            checkpoint: cp.seq,
                        },
                    ));
                    break 'log;
                }
                good = good.max(cp.seq);
            }
            if done {
                break;
            }
        }
        log_entries = Some(entries);
    }

    // Records that should have been sealed by now.
    let due = options
        .now
        .checked_sub(
            time::Duration::try_from(options.max_unsealed_age).unwrap_or(time::Duration::ZERO),
        )
        .unwrap_or(options.now);
    if let Some((seq, recorded_at)) = snap
        .first_seq_before(
            &crate::store::timestamp(due),
            chain.sealed_seq,
            chain.last_seq,
        )
        .await?
    {
        failures.extend(broken(seq, Damage::Unsealed { recorded_at }));
    }

    // The checkpoints' time-stamp tokens.
    let timestamps =
        match check_timestamps(&mut snap, head.cut_seq, options.tsa_cert.as_ref()).await? {
            Ok(summary) => summary,
            Err(failure) => {
                failures.push(failure);
                TimestampSummary::default()
            }
        };

    Ok(match failures.into_iter().min_by_key(|f| f.seq) {
        Some(first) => EvidenceVerdict::Broken(first),
        None => EvidenceVerdict::Intact(EvidenceSummary {
            chain,
            sealer_state_seq: state.map(|s| s.seq),
            checkpoint_log_entries: log_entries,
            timestamps,
        }),
    })
}
