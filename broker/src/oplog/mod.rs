//! The operation log (操作ログ, R17): every human action, hash-chained and
//! checkpointed.
//!
//! Who did what to what, when, from where, and how it ended: logins and
//! their failures, lockouts, approvals, searches and exports, user, role,
//! flow-list and org changes — from the console and from the host CLI
//! (actor `host:<login name>`). Tamper evidence works as for the provision
//! records ([`crate::records`]), with the same sealer key:
//! - every entry is appended under the head row's lock in its own
//!   transaction (gap-free sequence numbers across tasks and processes on
//!   one database), hash-linked to the one before it and signed, and is
//!   durable before [`OperationLog::append`] returns;
//! - a task signs a checkpoint of the head every few seconds when there are
//!   new entries (and once more at close), after re-checking the entries
//!   since the previous one; each checkpoint names the one before it, and
//!   the last head this host signed is kept in a state file beside the key
//!   ([`STATE_FILE`]);
//! - [`OperationLog::verify`] and `kakehashi-broker oplog verify` name the
//!   first bad sequence and the kind of damage ([`OpDamage`]).
//!
//! The types have no field for a password, a TOTP secret, an item value or
//! an Individual Number, and the text fields are short and validated
//! ([`OpEntry::validate`]). The tables refuse UPDATE and DELETE by trigger;
//! whoever drops the triggers to rewrite history is caught by verification.
//! Canonical encoding: [`entry`]; hashes and signatures: [`chain`].

pub mod chain;
pub mod entry;
mod host;
mod sealer;
mod store;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kakehashi_interfaces::audit::GENESIS_HASH;
use kakehashi_interfaces::{ErrorCode, OrgId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::BrokerError;
use crate::store::Pools;

pub use chain::{chain_hash, OpDamage, OpFailure, OpSummary};
pub use entry::{
    host_actor, validate_actor, OpAction, OpEntry, OpRecord, OpResult, HOST_ACTOR_PREFIX,
    MAX_TEXT_CHARS,
};
pub use host::HostLog;
pub use sealer::STATE_FILE;
pub use verify::{verify_store, OpVerdict};

/// How often the sealer task signs a checkpoint when there are new entries.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Entries logged longer ago than this must be covered by a checkpoint, or
/// verification fails: twice the checkpoint interval.
pub const UNSEALED_GRACE: Duration = Duration::from_secs(10);

/// Most entries one search returns.
pub const MAX_PAGE: usize = 1000;

/// Options of [`OperationLog::open_with`].
#[derive(Debug, Clone)]
pub struct OplogOptions {
    /// How often the sealer task runs; zero: no task (checkpoints only when
    /// [`OperationLog::checkpoint`] is called, and at close).
    pub checkpoint_interval: Duration,
}

impl Default for OplogOptions {
    fn default() -> Self {
        Self {
            checkpoint_interval: CHECKPOINT_INTERVAL,
        }
    }
}

/// Which results a search keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResultFilter {
    /// Only actions that were done.
    Success,
    /// Only refused actions (any code).
    Refused,
}

/// What a search keeps; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct OpFilter {
    /// Logged at or after this instant.
    pub since: Option<time::OffsetDateTime>,
    /// Logged before this instant.
    pub until: Option<time::OffsetDateTime>,
    /// This actor exactly.
    pub actor: Option<String>,
    /// Concerning this org.
    pub org: Option<OrgId>,
    /// This action.
    pub action: Option<OpAction>,
    /// Done or refused.
    pub result: Option<OpResultFilter>,
}

/// The operation log of one broker process (or one host command).
pub struct OperationLog {
    pools: Pools,
    key_dir: PathBuf,
    /// The sealer key (the provision records') and the keys trusted with
    /// it, read again when the key file changes (a rotation).
    sealer: crate::keys::Sealer,
    seal_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for OperationLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationLog")
            .field("sealer_key_id", &self.sealer.current().key_id)
            .finish_non_exhaustive()
    }
}

fn not_sealing(message: String) -> BrokerError {
    BrokerError::refused(ErrorCode::Internal, message)
}

impl OperationLog {
    /// Opens the log on the store's pools with the provision records'
    /// sealer key from `keys_dir` (created there if neither has yet), and
    /// starts the checkpoint task.
    pub async fn open(pools: Pools, keys_dir: &Path) -> Result<Arc<OperationLog>, BrokerError> {
        Self::open_with(pools, keys_dir, OplogOptions::default()).await
    }

    /// [`OperationLog::open`] with options.
    pub async fn open_with(
        pools: Pools,
        keys_dir: &Path,
        options: OplogOptions,
    ) -> Result<Arc<OperationLog>, BrokerError> {
        let dir = keys_dir.to_path_buf();
        let sealer = tokio::task::spawn_blocking(move || crate::keys::Sealer::open(&dir))
            .await
            .map_err(|e| BrokerError::Config(format!("loading the sealer key: {e}")))??;
        let (stop, _) = watch::channel(false);
        let log = Arc::new(OperationLog {
            pools,
            key_dir: keys_dir.to_path_buf(),
            sealer,
            seal_lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            stop,
            task: Mutex::new(None),
        });
        if !options.checkpoint_interval.is_zero() {
            let task = tokio::spawn(seal_task(
                Arc::downgrade(&log),
                log.stop.subscribe(),
                options.checkpoint_interval,
            ));
            if let Ok(mut slot) = log.task.lock() {
                *slot = Some(task);
            }
        }
        Ok(log)
    }

    /// Id of the key that signs entries and checkpoints.
    pub fn sealer_key_id(&self) -> String {
        self.sealer.current().key_id.clone()
    }

    /// Validates and appends one entry; returns its sequence number once
    /// it is committed. Fails with `invalid_input` (nothing stored) for a
    /// bad field, `unavailable` after [`OperationLog::close`].
    pub async fn append(&self, entry: OpEntry) -> Result<u64, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::refused(
                ErrorCode::Unavailable,
                "the operation log is closed",
            ));
        }
        let entry = entry.validate()?;
        store::append(&self.pools, &entry, &self.sealer.current().key).await
    }

    /// Entries matching `filter`, newest first: at most `limit` (capped at
    /// [`MAX_PAGE`]), only those below `before_seq` when given (the last
    /// sequence of the previous page).
    pub async fn search(
        &self,
        filter: &OpFilter,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<OpRecord>, BrokerError> {
        search(&self.pools, filter, limit, before_seq).await
    }

    /// Signs a checkpoint of the head if it has none yet, and returns the
    /// sequence now sealed. Refuses (signing nothing) when the database no
    /// longer holds the head this host signed last, or when the entries
    /// since the newest checkpoint fail verification: a tampered log is
    /// never blessed.
    pub async fn checkpoint(&self) -> Result<Option<u64>, BrokerError> {
        let _one_at_a_time = self.seal_lock.lock().await;
        // A rotated key (`keys rotate-sealer`) signs from the next checkpoint.
        if let Some(key_id) = self.sealer.refresh() {
            tracing::info!(%key_id, "the sealer key changed on disk; operation-log entries and checkpoints are signed with it from now on");
        }
        let (head_seq, _) = store::read_head(&self.pools).await?;
        let latest = store::latest_checkpoint(&self.pools).await?;
        if head_seq == 0 {
            return Ok(None);
        }
        if let Some(cp) = latest.as_ref().filter(|cp| cp.seq >= head_seq) {
            return Ok(Some(cp.seq));
        }
        if let Some(state) = sealer::read_state(&self.key_dir)? {
            let stored = store::checkpoint_at(&self.pools, state.seq).await?;
            if stored.is_none_or(|cp| cp.head_hash != state.hash) {
                return Err(not_sealing(format!(
                    "the operation-log checkpoint at {} this sealer signed is missing or differs \
                     (see `kakehashi-broker oplog verify`); not sealing until an administrator \
                     has investigated and moved {} aside",
                    state.seq,
                    sealer::STATE_FILE
                )));
            }
        }
        let (start_seq, start_hash) = match &latest {
            Some(cp) if !cp.verify(&self.sealer.current().trusted) => {
                return Err(not_sealing(format!(
                    "operation-log checkpoint {} is not validly signed; not sealing",
                    cp.seq
                )))
            }
            Some(cp) => (cp.seq, cp.head_hash),
            None => (0, GENESIS_HASH),
        };
        let walk = verify::walk(
            &self.pools,
            self.sealer.current().trusted.clone(),
            verify::WalkPlan {
                start_seq,
                start_hash,
                start_checkpoint: start_seq,
                whole_store: false,
                expect: None,
                sealed_before: None,
            },
        )
        .await?;
        if let Err(failure) = walk.outcome {
            return Err(not_sealing(format!(
                "the operation log fails verification at {failure}; not sealing"
            )));
        }
        let (seq, hash) = walk.head;
        if seq <= start_seq {
            return Ok(Some(start_seq));
        }
        let Some(cp) =
            store::insert_checkpoint(&self.pools, seq, hash, &self.sealer.current().key).await?
        else {
            // Another process sealed it (or past it) meanwhile.
            return Ok(store::latest_checkpoint(&self.pools).await?.map(|c| c.seq));
        };
        let dir = self.key_dir.clone();
        let head = chain::SignedHead {
            seq: cp.seq,
            hash: cp.head_hash,
        };
        tokio::task::spawn_blocking(move || sealer::write_state(&dir, head))
            .await
            .map_err(|e| BrokerError::Config(format!("writing the sealer state: {e}")))??;
        Ok(Some(cp.seq))
    }

    /// Verifies the whole log (see [`verify_store`]), trusting this
    /// process's sealer key too.
    pub async fn verify(&self) -> Result<OpVerdict, BrokerError> {
        verify::verify_with(
            &self.pools,
            self.sealer.current().trusted.clone(),
            &self.key_dir,
        )
        .await
    }

    /// Stops the checkpoint task and signs a final checkpoint; later
    /// appends fail.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Err(e) = self.checkpoint().await {
            tracing::error!(error = %e, "final operation-log checkpoint not signed");
        }
    }
}

/// [`OperationLog::search`] on a store without opening the log (no key needed).
pub async fn search(
    pools: &Pools,
    filter: &OpFilter,
    limit: usize,
    before_seq: Option<u64>,
) -> Result<Vec<OpRecord>, BrokerError> {
    let rows = store::search(pools, filter, limit.clamp(1, MAX_PAGE), before_seq).await?;
    rows.iter()
        .map(|row| {
            row.decode().map(|(record, _)| record).map_err(|_| {
                BrokerError::refused(
                    ErrorCode::Internal,
                    format!(
                        "operation-log entry {} cannot be read; run `kakehashi-broker oplog verify`",
                        row.seq
                    ),
                )
            })
        })
        .collect()
}

async fn seal_task(log: Weak<OperationLog>, mut stop: watch::Receiver<bool>, every: Duration) {
    // The same refusal every few seconds is logged once, until it changes.
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let Some(log) = log.upgrade() else { return };
        match log.checkpoint().await {
            Ok(_) => last_error = None,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "operation-log checkpoint not signed");
                    last_error = Some(text);
                }
            }
        }
    }
}
