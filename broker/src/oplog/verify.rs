//! Walking the stored log through [`ChainCheck`] in one read snapshot:
//! the whole store for `oplog verify`, or the tail after the newest
//! checkpoint before the sealer signs a new one.

use std::collections::VecDeque;
use std::path::Path;

use kakehashi_interfaces::audit::{Hash, TrustedKeys, GENESIS_HASH};
use serde::Serialize;

use super::chain::{ChainCheck, OpFailure, OpSummary, SignedHead};
use super::sealer;
use super::store::{CheckpointRow, EntryRow};
use crate::error::BrokerError;
use crate::store::Pools;

/// The result of checking the operation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum OpVerdict {
    /// Every entry reproduces its hash and carries the sealer's signature,
    /// no sequence is missing, every checkpoint is validly signed, follows
    /// the one before it and matches, and the sealer's last signed head is
    /// there.
    Intact(OpSummary),
    /// The first bad sequence number and what is wrong there.
    Broken(OpFailure),
}

impl OpVerdict {
    /// True when intact.
    pub fn is_intact(&self) -> bool {
        matches!(self, OpVerdict::Intact(_))
    }
}

/// What to walk.
pub(crate) struct WalkPlan {
    /// The chain starts after this sequence …
    pub start_seq: u64,
    /// … with this hash, where this checkpoint (0: none) stands.
    pub start_hash: Hash,
    /// The checkpoint at `start_seq` (0 when none).
    pub start_checkpoint: u64,
    /// Also read entries at or before `start_seq` (there must be none) and
    /// entries beyond the head row.
    pub whole_store: bool,
    /// The head the sealer says it signed last.
    pub expect: Option<SignedHead>,
    /// Entries logged before this must be sealed.
    pub sealed_before: Option<String>,
}

impl WalkPlan {
    /// Everything, from the genesis hash.
    pub fn whole(expect: Option<SignedHead>, sealed_before: Option<String>) -> Self {
        Self {
            start_seq: 0,
            start_hash: GENESIS_HASH,
            start_checkpoint: 0,
            whole_store: true,
            expect,
            sealed_before,
        }
    }
}

/// How a walk went.
pub(crate) struct Walk {
    /// The summary, or the first failure.
    pub outcome: Result<OpSummary, OpFailure>,
    /// Last sequence walked and its chain hash.
    pub head: (u64, Hash),
}

/// Entries verified between two yields to the scheduler.
const YIELD_EVERY: u64 = 64;

/// Walks entries and checkpoints in sequence order, in one snapshot, in
/// chunks (constant memory).
pub(crate) async fn walk(
    pools: &Pools,
    keys: TrustedKeys,
    plan: WalkPlan,
) -> Result<Walk, BrokerError> {
    let mut snap = pools.backend().snapshot().await?;
    let (head_seq, _) = snap.oplog_head().await?;
    let mut check = ChainCheck::new(keys, plan.start_seq, plan.start_hash, plan.start_checkpoint);
    if let Some(expect) = plan.expect {
        check.expect_signed(expect);
    }
    if let Some(at) = plan.sealed_before {
        check.require_sealed_before(at);
    }
    // Rows at or below 0 and beyond the head exist only when inserted; the
    // whole-store walk reads them so they are named.
    let (mut after, upto) = if plan.whole_store {
        (i64::MIN, i64::MAX)
    } else {
        (
            super::store::to_i64(plan.start_seq),
            super::store::to_i64(head_seq),
        )
    };
    let mut entries: VecDeque<EntryRow> = VecDeque::new();
    let mut entries_done = false;
    let mut cps: VecDeque<CheckpointRow> = VecDeque::new();
    let mut cp_after = if plan.whole_store {
        i64::MIN
    } else {
        super::store::to_i64(plan.start_seq)
    };
    let mut cps_done = false;
    let done = |check: &ChainCheck, outcome| Walk {
        outcome,
        head: (check.last_seq(), check.head_hash()),
    };
    let mut walked = 0u64;
    loop {
        // Keep one entry of lookahead (to tell an insertion from an edit).
        if entries.len() < 2 && !entries_done {
            let chunk = snap.oplog_entries(after, upto).await?;
            entries_done = (chunk.len() as i64) < super::store::CHUNK;
            if let Some(last) = chunk.last() {
                after = last.seq;
            }
            entries.extend(chunk);
        }
        let Some(row) = entries.pop_front() else {
            break;
        };
        walked += 1;
        if walked.is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
        let Ok((record, seal)) = row.decode() else {
            let failure = check.unreadable(row.seq_u64());
            return Ok(done(&check, Err(failure)));
        };
        let next = entries.front().and_then(|n| n.decode().ok());
        if let Err(f) = check.push_entry(&record, &seal, next.as_ref().map(|(r, s)| (r, s))) {
            return Ok(done(&check, Err(f)));
        }
        loop {
            if cps.is_empty() && !cps_done {
                let chunk = snap.oplog_checkpoints(cp_after).await?;
                cps_done = (chunk.len() as i64) < super::store::CHUNK;
                if let Some(last) = chunk.last() {
                    cp_after = last.seq;
                }
                cps.extend(chunk);
            }
            match cps.front() {
                Some(cp) if cp.seq <= row.seq => {}
                _ => break,
            }
            if let Some(cp) = cps.pop_front() {
                if let Err(f) = check.push_checkpoint(&cp.to_checkpoint()) {
                    return Ok(done(&check, Err(f)));
                }
            }
        }
    }
    // Checkpoints beyond the last entry: the entries they cover are gone.
    loop {
        if cps.is_empty() && !cps_done {
            let chunk = snap.oplog_checkpoints(cp_after).await?;
            cps_done = (chunk.len() as i64) < super::store::CHUNK;
            if let Some(last) = chunk.last() {
                cp_after = last.seq;
            }
            cps.extend(chunk);
        }
        let Some(cp) = cps.pop_front() else {
            break;
        };
        if let Err(f) = check.push_checkpoint(&cp.to_checkpoint()) {
            return Ok(done(&check, Err(f)));
        }
    }
    let head = (check.last_seq(), check.head_hash());
    Ok(Walk {
        outcome: check.finish(head_seq),
        head,
    })
}

/// Verifies the whole log against the sealer keys in `key_dir` (and
/// `also`), and against the head the sealer's state file there says it
/// signed last. Entries logged more than [`super::UNSEALED_GRACE`] ago must
/// be covered by a checkpoint. Names the first bad sequence and what is
/// wrong there; reads one snapshot, so it runs safely beside brokers.
pub async fn verify_store(pools: &Pools, key_dir: &Path) -> Result<OpVerdict, BrokerError> {
    let keys = crate::keys::trusted_keys(key_dir)?;
    verify_with(pools, keys, key_dir).await
}

pub(crate) async fn verify_with(
    pools: &Pools,
    keys: TrustedKeys,
    key_dir: &Path,
) -> Result<OpVerdict, BrokerError> {
    let expect = sealer::read_state(key_dir)?;
    let cutoff = time::OffsetDateTime::now_utc() - super::UNSEALED_GRACE;
    let walk = walk(
        pools,
        keys,
        WalkPlan::whole(expect, Some(crate::store::timestamp(cutoff))),
    )
    .await?;
    Ok(match walk.outcome {
        Ok(summary) => OpVerdict::Intact(summary),
        Err(failure) => OpVerdict::Broken(failure),
    })
}
