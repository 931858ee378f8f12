//! Provision records (情報提供等記録, R14–R18, R23).
//!
//! Every query, provision, denial, approval, rejection and expiry is
//! appended here, and the broker answers only after the record is committed.
//! - **Group commit** ([`writer`]): one writer, on a thread of its own,
//!   batches whatever is queued into one transaction under a lock on the
//!   head row, which assigns gap-free sequence numbers and hash-links each
//!   record to the previous one.
//! - **Sealing**: a task signs a checkpoint (Ed25519) of the head every
//!   `checkpoint_interval_ms` when there are new records, and once more at
//!   close: the head the writer computed when it is still the stored one,
//!   otherwise (a tail from before a restart or from another node) after
//!   re-checking the records since the previous checkpoint.
//! - **Person index** (SQLite): which records concern a person, for
//!   disclosure, kept in a side file by a background task rather than as
//!   indexes written with every commit (`store/sqlite/person_index.rs`).
//! - **Verification, export, purge, disclosure**: library functions for the
//!   CLI and the auditor console. The pure parts (canonical encoding, chain
//!   hashing, checkpoint bytes, verifiers) live in
//!   [`kakehashi_interfaces::audit`], so exports verify offline.
//!
//! Person codes are stored (R14 asks for them) but enter hashes only through
//! salted commitments, are never logged and never exported.

mod checkpoint_log;
use crate::store::records::table as db;
mod export;
pub(crate) mod purge;
pub mod sealer_state;
mod search;
mod tsa;
mod verify;
mod witness;
mod writeback;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kakehashi_interfaces::audit::{Checkpoint, TrustedKeys};
use kakehashi_interfaces::{ErrorCode, OrgId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::BrokerError;
use crate::store::{PlannedRead, Pools};

pub use crate::config::{RecordsConfig, LEGAL_RETENTION_YEARS};
pub use crate::store::records::rows::RecordDraft;
pub(crate) use crate::store::records::rows::{Deletes, NewRow};
pub use export::{ExportFilter, ExportRequest, ExportSummary};
pub use kakehashi_interfaces::audit::{ChainFailure, ChainSummary, ExportFormat, Outcome};
pub use purge::{retention_cutoff, retention_years, PurgeReport};
pub use sealer_state::{Finding, Refusal};
pub use search::{
    Download, DownloadRequest, DownloadSummary, ExplainedStatement, ExportLimits, PageRequest,
    SearchFilter, SearchPage, DEFAULT_MAX_EXPORT_BYTES, DEFAULT_MAX_EXPORT_ROWS, MAX_PAGE_SIZE,
    OUTCOME_NAMES,
};
pub use tsa::load_tsa_cert;
pub use verify::{
    verify_evidence, verify_store, Damage, EvidenceFailure, EvidenceOptions, EvidenceSummary,
    EvidenceVerdict, TimestampSummary, Verdict, WalkProgress,
};

/// The org id that system records (exports, purges) name as requester.
pub const SYSTEM_ORG: &str = "kakehashi-broker";

impl RecordDraft {
    /// Checks bounds the encoding relies on and folds empty optionals into
    /// absent ones (an export cannot tell them apart).
    fn normalize(mut self) -> Result<Self, BrokerError> {
        const MAX: usize = 4096;
        let bad = |m: &str| BrokerError::refused(ErrorCode::InvalidInput, format!("record: {m}"));
        for opt in [
            &mut self.permit_id,
            &mut self.flow_id,
            &mut self.procedure,
            &mut self.requester_person_code,
            &mut self.provider_person_code,
            &mut self.approver,
        ] {
            if opt.as_deref() == Some("") {
                *opt = None;
            }
        }
        if self.query_id.is_empty() {
            return Err(bad("query id is empty"));
        }
        let strings = [
            Some(&self.query_id),
            self.permit_id.as_ref(),
            self.flow_id.as_ref(),
            self.procedure.as_ref(),
            self.requester_person_code.as_ref(),
            self.provider_person_code.as_ref(),
            self.approver.as_ref(),
        ];
        if strings.iter().flatten().any(|s| s.len() > MAX) || self.items.len() > MAX {
            return Err(bad("a field is too long"));
        }
        // Items are stored and exported space-separated.
        if self.items.iter().any(|i| {
            i.is_empty() || i.len() > MAX || i.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err(bad("item codes must be non-empty without spaces"));
        }
        if self
            .flow_list_version
            .is_some_and(|v| i64::try_from(v).is_err())
        {
            return Err(bad("flow-list version out of range"));
        }
        Ok(self)
    }
}

pub use kakehashi_interfaces::audit::DisclosureEntry;

/// What became of a query's record and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Both are durable; the record has this sequence number.
    Committed(u64),
    /// The person data the answer was read under changed before the commit:
    /// nothing was committed; answer the query again.
    Stale,
}

/// The provision record log of one broker process.
pub struct RecordLog {
    pools: Pools,
    config: RecordsConfig,
    /// The checkpoint key and the keys trusted with it, read again when
    /// the key file changes (a rotation).
    sealer: crate::keys::Sealer,
    jobs: mpsc::Sender<writer::Job>,
    closed: AtomicBool,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    seal_lock: tokio::sync::Mutex<()>,
    /// What this process's writer last committed (see [`RecordLog::seal`]).
    committed: writer::CommittedHead,
    /// Records by person code, beside a SQLite database (R18).
    person_index: Option<crate::store::person_index::PersonIndex>,
    /// Where disclosures read ([`Pools::planned`]).
    person_reads: Pools,
    /// Where exports and verification read ([`Pools::planned`]).
    long_reads: Pools,
    /// Queries under way that will append soon (see [`RecordLog::expect_append`]).
    coming: Arc<AtomicUsize>,
    /// The cluster roles this node holds; unset, it holds them all.
    roles: std::sync::OnceLock<Arc<crate::cluster::Roles>>,
    /// The latest signed checkpoint, for answers (see [`RecordLog::latest_checkpoint`]).
    latest: witness::Latest,
    /// Where the sealer key and its state file live.
    key_dir: PathBuf,
    /// Set while the sealer refuses (the stored chain does not extend the
    /// head it signed last): read on every query, so an atomic.
    refusing: AtomicBool,
    /// What the sealer found, and the acceptance in force when it did.
    refusal: Mutex<Option<Latched>>,
    /// Reports the refusal as a metric.
    metrics: Option<crate::metrics::CommitMetrics>,
    /// The Time-Stamp Authority for checkpoints, if configured.
    tsa: Option<tsa::Tsa>,
}

/// A refusal and the administrator acceptance in force when it was found:
/// only a newer acceptance lifts it.
#[derive(Debug, Clone)]
struct Latched {
    refusal: Refusal,
    accepted: Option<sealer_state::Acceptance>,
}

/// A query under way that will append a record soon; the writer may hold a
/// commit briefly for it (`commit_delay_us`). Drop it just before appending,
/// so the writer stops counting it once its record is queued.
#[must_use = "the writer counts the query only while this lives"]
pub struct ExpectedAppend<'a>(&'a AtomicUsize);

impl Drop for ExpectedAppend<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for RecordLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLog")
            .field("sealer_key_id", &self.sealer.current().key_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The error a sealer finding makes (the message names the sequence and
/// the kind; it goes to the log and the command line, not to orgs).
fn refusal_error(refusal: &Refusal) -> BrokerError {
    let message = match refusal.finding {
        Finding::CommittedRewritten => format!(
            "the stored record at {} differs from what was committed; not sealing",
            refusal.seq
        ),
        _ => format!(
            "provision records fail verification at {refusal}; not sealing, and queries are \
             refused until an administrator runs `kakehashi-broker records accept-head`"
        ),
    };
    BrokerError::refused(ErrorCode::Internal, message)
}

fn unavailable() -> BrokerError {
    BrokerError::refused(
        ErrorCode::Unavailable,
        "the provision record could not be committed; the query was not answered",
    )
}

/// [`SYSTEM_ORG`] as an org id.
pub(crate) fn system_org() -> Result<OrgId, BrokerError> {
    OrgId::new(SYSTEM_ORG).map_err(BrokerError::from)
}

impl RecordLog {
    /// Opens the log on the store's pools, loads/creates the sealer key in
    /// the key dir (Ed25519, mode 0600, key id = first 16 hex of SHA-256 of
    /// the public key), starts the group-commit writer, the checkpoint
    /// sealer and (unless disabled) the retention purge.
    pub async fn open(
        pools: Pools,
        key_dir: &Path,
        config: RecordsConfig,
    ) -> Result<Arc<RecordLog>, BrokerError> {
        Self::open_observed(pools, key_dir, config, None).await
    }

    /// [`RecordLog::open`], reporting each group commit to `commits`.
    pub async fn open_observed(
        pools: Pools,
        key_dir: &Path,
        config: RecordsConfig,
        commits: Option<crate::metrics::CommitMetrics>,
    ) -> Result<Arc<RecordLog>, BrokerError> {
        let tsa = tsa::Tsa::from_config(&config)?;
        let sealer = crate::keys::Sealer::open(key_dir)?;
        let backend = pools.backend();
        backend.open_records().await?;
        let timing = backend.commit_timing();
        drop(backend);
        let (jobs, rx) = mpsc::channel(config.queue_capacity.max(1));
        let committed = writer::CommittedHead::default();
        let coming = Arc::new(AtomicUsize::new(0));
        let batching = writer::Batching {
            max_batch: config.max_batch.max(1),
            commit_delay: Duration::from_micros(config.commit_delay_us.unwrap_or(timing.delay_us)),
            commit_interval: Duration::from_micros(
                config.commit_interval_us.unwrap_or(timing.interval_us),
            ),
            coming: coming.clone(),
        };
        let writer = writer::spawn(
            rx,
            pools.clone(),
            batching,
            commits.clone(),
            committed.clone(),
        );
        let person_index = crate::store::person_index::PersonIndex::open(&pools).await?;
        let person_reads = pools.planned(PlannedRead::Disclosure).await?;
        let long_reads = pools.planned(PlannedRead::Long).await?;
        let (stop, _) = watch::channel(false);
        let log = Arc::new(RecordLog {
            pools,
            config,
            sealer,
            jobs,
            closed: AtomicBool::new(false),
            stop,
            tasks: Mutex::new(vec![writer]),
            seal_lock: tokio::sync::Mutex::new(()),
            committed,
            person_index,
            person_reads,
            long_reads,
            coming,
            roles: std::sync::OnceLock::new(),
            latest: witness::Latest::default(),
            key_dir: key_dir.to_path_buf(),
            refusing: AtomicBool::new(false),
            refusal: Mutex::new(None),
            metrics: commits,
            tsa,
        });
        log.load_latest_checkpoint().await?;
        if log.config.checkpoint_log.is_none() {
            tracing::warn!(
                "[records] checkpoint_log is not set: signed checkpoints are kept only in the \
                 database and the sealer's state file (docs/evidence.md)"
            );
        }
        // Before anything is signed: does the stored chain extend the head
        // the sealer signed last?
        log.check_at_open().await?;
        let mut tasks = vec![tokio::spawn(seal_task(
            Arc::downgrade(&log),
            log.stop.subscribe(),
            Duration::from_millis(log.config.checkpoint_interval_ms.max(10)),
        ))];
        if log.config.purge_interval_secs > 0 {
            tasks.push(tokio::spawn(purge_task(
                Arc::downgrade(&log),
                log.stop.subscribe(),
                Duration::from_secs(log.config.purge_first_delay_secs),
                Duration::from_secs(log.config.purge_interval_secs),
            )));
        }
        if log.config.wal_checkpoint_interval_ms > 0 {
            tasks.extend(log.pools.backend().spawn_upkeep(
                log.stop.subscribe(),
                Duration::from_millis(log.config.wal_checkpoint_interval_ms),
            ));
        }
        if let (Some(index), 1..) = (&log.person_index, log.config.person_index_interval_ms) {
            tasks.push(tokio::spawn(crate::store::person_index::index_task(
                index.clone(),
                log.pools.clone(),
                log.stop.subscribe(),
                Duration::from_millis(log.config.person_index_interval_ms),
            )));
        }
        tasks.extend(Pools::spawn_keep_planned(
            &[
                (&log.person_reads, PlannedRead::Disclosure),
                (&log.long_reads, PlannedRead::Long),
            ],
            log.stop.subscribe(),
        ));
        if let Ok(mut all) = log.tasks.lock() {
            all.extend(tasks);
        }
        tracing::info!(key_id = %log.sealer.current().key_id, "provision records open");
        Ok(log)
    }

    /// From now on checkpoints are signed and expired records purged only
    /// while this node holds the sealer and retention roles (`cluster`).
    pub fn follow_roles(&self, roles: Arc<crate::cluster::Roles>) {
        let _ = self.roles.set(roles);
    }

    /// Whether this node holds `role` (always, outside a cluster).
    fn plays(&self, role: crate::cluster::Role) -> bool {
        self.roles.get().is_none_or(|r| r.holds(role))
    }

    /// Tells the writer a query is under way and will append soon.
    pub fn expect_append(&self) -> ExpectedAppend<'_> {
        self.coming.fetch_add(1, Ordering::AcqRel);
        ExpectedAppend(&self.coming)
    }

    /// Appends one record; returns its sequence number only after the
    /// transaction holding it is committed (group commit). Fails with
    /// `unavailable` when it could not be committed: answer nothing then.
    pub async fn append(&self, draft: RecordDraft) -> Result<u64, BrokerError> {
        self.append_with_clock(draft, time::OffsetDateTime::now_utc())
            .await
    }

    /// [`RecordLog::append`] with the time a clock says: for tests and
    /// benchmarks of clock steps (R23) and retention. Not for the pipeline.
    #[doc(hidden)]
    pub async fn append_with_clock(
        &self,
        draft: RecordDraft,
        at: time::OffsetDateTime,
    ) -> Result<u64, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        self.enqueue(NewRow::new(draft.normalize()?, at)).await
    }

    /// Appends a query's record and stores its result (if any) in the same
    /// transaction: both are durable before this returns, or neither is.
    /// With a `stamp` (the answer was read from memory under it,
    /// [`crate::lookups::LookupStamp`]) it holds only while the database's
    /// lookup generation is the stamp's: when it changed, nothing is
    /// committed and the answer is [`Commit::Stale`].
    pub async fn append_answer(
        &self,
        draft: RecordDraft,
        result: Option<crate::results::OwnedResult>,
        stamp: Option<crate::lookups::LookupStamp>,
    ) -> Result<Commit, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        let mut row = NewRow::new(draft.normalize()?, time::OffsetDateTime::now_utc());
        row.result = result;
        row.lookup_stamp = stamp;
        self.submit(row).await
    }

    async fn enqueue(&self, row: NewRow) -> Result<u64, BrokerError> {
        match self.submit(row).await? {
            Commit::Committed(seq) => Ok(seq),
            // Only appends with a lookup stamp can be stale.
            Commit::Stale => Err(BrokerError::Internal(
                "a record without a lookup stamp was reported stale".into(),
            )),
        }
    }

    async fn submit(&self, row: NewRow) -> Result<Commit, BrokerError> {
        let row = Box::new(row);
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(writer::Job::Append { row, done })
            .await
            .map_err(|_| unavailable())?;
        match wait.await.map_err(|_| unavailable())? {
            Ok(seq) => Ok(Commit::Committed(seq)),
            Err(writer::NotCommitted::Failed) => Err(unavailable()),
            Err(writer::NotCommitted::LookupChanged) => Ok(Commit::Stale),
        }
    }

    /// Signs a final checkpoint and stops the tasks (called at shutdown).
    /// Appends queued before it are committed first; later ones fail.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.jobs.send(writer::Job::Close { done }).await.is_ok() {
            let _ = wait.await;
        }
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
        if let Some(index) = &self.person_index {
            index.close().await;
        }
        self.person_reads.close_own().await;
        self.long_reads.close_own().await;
        if !self.plays(crate::cluster::Role::Sealer) {
            return;
        }
        match self.seal().await {
            Ok(seq) => tracing::info!(sealed = ?seq, "provision records closed"),
            Err(e) => tracing::error!(error = %e, "final records checkpoint failed"),
        }
    }

    /// Id of the key that signs checkpoints (publish it for auditors).
    pub fn sealer_key_id(&self) -> String {
        self.sealer.current().key_id.clone()
    }

    /// The checkpoint key's public half, lowercase hex (Ed25519).
    pub fn sealer_public_key_hex(&self) -> String {
        hex::encode(self.sealer.current().key.verifying_key().as_bytes())
    }

    /// The keys whose checkpoints are valid, the current one included.
    fn trusted(&self) -> TrustedKeys {
        self.sealer.current().trusted.clone()
    }

    /// The settings in use.
    pub fn config(&self) -> &RecordsConfig {
        &self.config
    }

    /// Reads the sealer key again if it changed on disk: a rotated key
    /// (`keys rotate-sealer`) signs from the next checkpoint or export seal.
    pub(super) fn refresh_sealer(&self) {
        if let Some(key_id) = self.sealer.refresh() {
            tracing::info!(%key_id, "the checkpoint key changed on disk; checkpoints and export seals are signed with it from now on");
        }
    }

    /// Signs a checkpoint of the chain if its head has none yet — only when
    /// the stored chain extends the head the sealer signed last (its state
    /// file, [`sealer_state`]): the records from that head to the new one
    /// are re-checked from the rows first. The position this process's
    /// writer committed last is signed when the store still holds it there
    /// (so a busy log is sealed up to what its writer knows, even though the
    /// head moves on meanwhile); otherwise the stored head. Every checkpoint
    /// signed also goes to the checkpoint log, if one is configured, and
    /// then to the state file.
    ///
    /// On a finding nothing is signed, the log refuses queries
    /// ([`RecordLog::ensure_sealing`]) and keeps refusing until an
    /// administrator accepts a head (`records accept-head`). Returns the
    /// sequence now sealed.
    pub async fn seal(&self) -> Result<Option<u64>, BrokerError> {
        let _one_at_a_time = self.seal_lock.lock().await;
        self.refresh_sealer();
        // The state file is written after its checkpoint, and the
        // checkpoint after its records: read in this order, the stored head
        // is at or past the signed one unless the store went back.
        let state = sealer_state::read(&self.key_dir)?;
        // What this process's writer committed last, read before the stored
        // head: the writer publishes it only after its commit, so the stored
        // head is at or past it even when a commit lands in between (which,
        // under load, is most of the time).
        let ours = self.committed.lock().ok().and_then(|c| *c);
        let head = db::read_head(&self.pools).await?;
        let latest = db::latest_checkpoint(&self.pools)
            .await?
            .map(|c| c.to_checkpoint());
        let unsealed =
            |seq: u64| seq > head.cut_seq && latest.as_ref().is_none_or(|cp| cp.seq < seq);
        let signed_seq = state.as_ref().map_or(0, |s| s.seq);
        // A stored head behind what this writer committed: records it
        // committed (and whose answers left) were deleted and the head set
        // back, before any checkpoint covered them.
        if let Some((seq, _)) = ours.filter(|(seq, _)| *seq > head.seq) {
            let refusal = Refusal {
                seq: head.seq + 1,
                finding: Finding::CommittedRewritten,
            };
            tracing::error!(
                committed = seq,
                head = head.seq,
                "the stored head is behind what this node committed"
            );
            return Err(self.found(refusal, state.as_ref()));
        }
        // The head this process's writer committed is known without reading
        // the rows back: the store must still hold it — the head row itself,
        // or the record at that position when commits have moved the head
        // on since. Anything else was changed behind the writer's back.
        let target = match ours
            .filter(|(seq, _)| *seq <= head.seq && *seq >= signed_seq && unsealed(*seq))
        {
            Some((seq, hash)) => {
                let stored = if seq == head.seq {
                    Some(head.hash)
                } else {
                    self.pools
                        .backend()
                        .snapshot()
                        .await?
                        .stored_hash(seq)
                        .await?
                };
                if stored != Some(hash) {
                    let refusal = Refusal {
                        seq,
                        finding: Finding::CommittedRewritten,
                    };
                    return Err(self.found(refusal, state.as_ref()));
                }
                Some((seq, Some(hash)))
            }
            None if head.seq > 0 && unsealed(head.seq) => Some((head.seq, None)),
            None => None,
        };
        if let Some(refused) = self.still_refusing(state.as_ref()) {
            return Err(refused);
        }
        let end = target.map_or(head.seq, |(seq, _)| seq);
        let reached = match self
            .extends(state.as_ref(), &head, latest.as_ref(), end)
            .await?
        {
            Ok(hash) => hash,
            Err(refusal) => return Err(self.found(refusal, state.as_ref())),
        };
        let Some((seq, known)) = target else {
            return Ok(latest.map(|cp| cp.seq).filter(|_| head.seq > 0));
        };
        if known.is_some_and(|known| known != reached) {
            let refusal = Refusal {
                seq,
                finding: Finding::CommittedRewritten,
            };
            return Err(self.found(refusal, state.as_ref()));
        }
        let keys = self.sealer.current();
        let mut cp = Checkpoint::sign(seq, reached, crate::store::now_rfc3339(), &keys.key);
        cp.timestamp = self.timestamp(&cp).await;
        db::insert_checkpoint(&self.pools, &cp, keys.key.verifying_key().as_bytes()).await?;
        self.remember_checkpoint(&cp);
        if let Some(path) = &self.config.checkpoint_log {
            checkpoint_log::append(path, &cp)?;
        }
        let accepted = state.and_then(|s| s.accepted);
        sealer_state::advance(
            &self.key_dir,
            &sealer_state::SealerState::signed(&cp, accepted),
        )?;
        Ok(Some(seq))
    }

    /// The TSA's token for `cp`, if a TSA is configured and answers; a
    /// failure is a warning and a metric, never a reason not to seal.
    async fn timestamp(&self, cp: &Checkpoint) -> Option<Vec<u8>> {
        let tsa = self.tsa.as_ref()?;
        let result = tsa.stamp(cp).await;
        if let Some(metrics) = &self.metrics {
            metrics.checkpoint_timestamp(result.is_ok());
        }
        match result {
            Ok(token) => Some(token),
            Err(why) => {
                tracing::warn!(
                    seq = cp.seq,
                    error = %why,
                    "the TSA gave no time-stamp token: this checkpoint is signed without one; \
                     the next checkpoint asks again"
                );
                None
            }
        }
    }

    /// Checks the stored chain against the sealer's state once at open, so
    /// a broker started on a rewritten, rewound or restored database refuses
    /// from its first query.
    async fn check_at_open(&self) -> Result<(), BrokerError> {
        let _one_at_a_time = self.seal_lock.lock().await;
        let state = sealer_state::read(&self.key_dir)?;
        let head = db::read_head(&self.pools).await?;
        let latest = db::latest_checkpoint(&self.pools)
            .await?
            .map(|c| c.to_checkpoint());
        if let Err(refusal) = self
            .extends(state.as_ref(), &head, latest.as_ref(), head.seq)
            .await?
        {
            let _ = self.found(refusal, state.as_ref());
        }
        Ok(())
    }

    /// Whether the stored chain leads from the head the sealer signed last
    /// (`state`) to `end` (≤ the stored head); the chain hash at `end` when
    /// it does, what is wrong when it does not.
    async fn extends(
        &self,
        state: Option<&sealer_state::SealerState>,
        head: &db::Head,
        latest: Option<&Checkpoint>,
        end: u64,
    ) -> Result<Result<kakehashi_interfaces::audit::Hash, Refusal>, BrokerError> {
        let refuse = |seq, finding| Ok(Err(Refusal { seq, finding }));
        let (start_seq, start_hash, whole_store) = match state {
            // The first start on this database: nothing was signed yet.
            None if latest.is_none() => (head.cut_seq, head.cut_hash, false),
            None => return refuse(head.cut_seq + 1, Finding::StateMissing),
            Some(s) => {
                let signed = s.hash()?;
                if s.seq > head.seq {
                    return refuse(
                        head.seq + 1,
                        Finding::Rewound {
                            signed: s.seq,
                            head: head.seq,
                        },
                    );
                }
                // Purged up to or past the signed head: lawful only if that
                // head is older than the retention period (a purge takes
                // nothing younger), else the purge record and cut are forged.
                let cutoff = self.retention_cutoff(time::OffsetDateTime::now_utc());
                if let Some(forged) = sealer_state::unexpired_purge(s, head.cut_seq, cutoff) {
                    return refuse(
                        forged.signed,
                        Finding::PurgedUnexpired {
                            signed: forged.signed,
                        },
                    );
                }
                if s.seq < head.cut_seq {
                    // Purged past the signed head (by another node): the
                    // rest is checked from the cut, which a purge record in
                    // the chain must confirm.
                    (head.cut_seq, head.cut_hash, true)
                } else if s.seq == head.cut_seq {
                    if signed != head.cut_hash {
                        return refuse(s.seq, Finding::Rechained { signed: s.seq });
                    }
                    (s.seq, signed, false)
                } else {
                    let stored = self
                        .pools
                        .backend()
                        .snapshot()
                        .await?
                        .stored_hash(s.seq)
                        .await?;
                    if stored != Some(signed) {
                        return Ok(Err(self
                            .locate(s.seq, Finding::Rechained { signed: s.seq })
                            .await?));
                    }
                    // The checkpoint it signed must still be stored.
                    if s.checkpoint.is_some() {
                        let kept = db::checkpoint_at(&self.pools, s.seq).await?;
                        if kept.is_none_or(|cp| cp.head_hash != signed.as_slice()) {
                            return refuse(s.seq, Finding::CheckpointMissing { checkpoint: s.seq });
                        }
                    }
                    (s.seq, signed, false)
                }
            }
        };
        let walk = verify::walk(
            &self.pools,
            self.trusted(),
            verify::WalkPlan {
                start_seq,
                start_hash,
                end_seq: end.max(start_seq),
                whole_store,
                capture: None,
                progress: None,
            },
        )
        .await?;
        Ok(match walk.verdict {
            Verdict::Intact(_) => Ok(walk.head),
            Verdict::Broken(f) => Err(Refusal {
                seq: f.seq,
                finding: Finding::Chain(f.kind),
            }),
        })
    }

    /// Names the first bad sequence at or before `signed`, if a whole-store
    /// verification finds one (a re-chain that kept the checkpoints, or an
    /// edit without re-chaining); else `signed` itself.
    async fn locate(&self, signed: u64, finding: Finding) -> Result<Refusal, BrokerError> {
        if let Verdict::Broken(f) = verify::verify_store(&self.pools, &self.trusted()).await? {
            if f.seq <= signed {
                return Ok(Refusal {
                    seq: f.seq,
                    finding,
                });
            }
        }
        Ok(Refusal {
            seq: signed,
            finding,
        })
    }

    /// Refuses from now on, says what was found (error log, metric) and
    /// returns the error for the caller.
    fn found(&self, refusal: Refusal, state: Option<&sealer_state::SealerState>) -> BrokerError {
        tracing::error!(
            seq = refusal.seq,
            kind = refusal.finding.name(),
            finding = %refusal.finding,
            "provision records do not extend the head the sealer signed last: nothing is signed \
             and queries are refused until an administrator investigates and runs \
             `kakehashi-broker records accept-head`"
        );
        if let Some(metrics) = &self.metrics {
            metrics.sealer_refusal(Some((refusal.finding.name(), refusal.seq)));
        }
        let error = refusal_error(&refusal);
        if let Ok(mut latched) = self.refusal.lock() {
            *latched = Some(Latched {
                refusal,
                accepted: state.and_then(|s| s.accepted.clone()),
            });
        }
        self.refusing.store(true, Ordering::Release);
        error
    }

    /// Whether sealing is refused (a rewritten or rewound store found) until
    /// an administrator accepts the head.
    fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// The refusal in force, unless an administrator accepted a head since
    /// it was found (then it is lifted and the checks run again).
    fn still_refusing(&self, state: Option<&sealer_state::SealerState>) -> Option<BrokerError> {
        if !self.is_refusing() {
            return None;
        }
        let mut latched = self.refusal.lock().ok()?;
        let current = latched.as_ref()?;
        let accepted = state.and_then(|s| s.accepted.as_ref());
        match accepted {
            Some(a) if Some(a) != current.accepted.as_ref() => {
                tracing::warn!(
                    seq = current.refusal.seq,
                    kind = current.refusal.finding.name(),
                    accepted_by = %a.actor,
                    accepted_at = %a.at,
                    "an administrator accepted the provision records' head; sealing resumes"
                );
                *latched = None;
                self.refusing.store(false, Ordering::Release);
                if let Some(metrics) = &self.metrics {
                    metrics.sealer_refusal(None);
                }
                None
            }
            _ => Some(refusal_error(&current.refusal)),
        }
    }

    /// What the sealer found, while it refuses to sign (and the broker to
    /// answer queries).
    pub fn sealer_refusal(&self) -> Option<Refusal> {
        if !self.refusing.load(Ordering::Acquire) {
            return None;
        }
        self.refusal
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|l| l.refusal.clone()))
    }

    /// Fails with `unavailable` while the sealer refuses: a query answered
    /// now would be recorded in a chain nobody can vouch for. One atomic
    /// load on the query path.
    pub fn ensure_sealing(&self) -> Result<(), BrokerError> {
        if !self.refusing.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(BrokerError::refused(
            ErrorCode::Unavailable,
            "the broker's provision records failed their integrity check; queries are refused \
             until its administrator has investigated",
        ))
    }

    /// Brings the SQLite person index up to the head now rather than at its
    /// next interval; returns the records indexed (0 on PostgreSQL).
    pub async fn catch_up_person_index(&self) -> Result<u64, BrokerError> {
        match &self.person_index {
            Some(index) => index.catch_up(&self.pools).await,
            None => Ok(0),
        }
    }

    /// Verifies the whole store (see [`verify_store`]).
    pub async fn verify(&self) -> Result<Verdict, BrokerError> {
        verify::verify_store(&self.long_reads, &self.trusted()).await
    }

    /// Records concerning one person, found by `org`'s own person code: those
    /// where `org` is the requester with that code or the provider with that
    /// code (R18). Other orgs' codes are never returned.
    pub async fn disclosure(
        &self,
        org: &OrgId,
        person_code: &str,
    ) -> Result<Vec<DisclosureEntry>, BrokerError> {
        // What the SQLite side index knows; the rest (everything on
        // PostgreSQL, which indexes the codes itself) is found by the scan
        // past the mark.
        let indexed = match &self.person_index {
            Some(index) => index.lookup(org.as_str(), person_code).await?,
            None => crate::store::person_index::Indexed {
                mark: 0,
                seqs: Vec::new(),
            },
        };
        let mut rows: Vec<db::RecordRow> = Vec::new();
        for chunk in indexed.seqs.chunks(500) {
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {} FROM records WHERE seq IN ({list}) ORDER BY seq",
                db::RECORD_COLUMNS
            );
            let found: Vec<db::RecordRow> = crate::on_pool!(&self.pools, read, |pool| {
                sqlx::query_as(&sql).fetch_all(pool).await?
            });
            rows.extend(found);
        }
        let tail: Vec<db::RecordRow> = crate::on_pool!(&self.person_reads, read, |pool| {
            sqlx::query_as(db::PERSON_RECORDS)
                .bind(org.as_str())
                .bind(person_code)
                .bind(db::to_i64(indexed.mark))
                .fetch_all(pool)
                .await?
        });
        rows.extend(tail);
        let concerns = |r: &db::RecordRow| {
            (r.requester == org.as_str() && r.requester_code.as_deref() == Some(person_code))
                || (r.provider.as_deref() == Some(org.as_str())
                    && r.provider_code.as_deref() == Some(person_code))
        };
        // The index is derived data: an entry must still describe its record.
        rows.retain(concerns);
        rows.sort_by_key(|r| r.seq);
        rows.dedup_by_key(|r| r.seq);
        Ok(rows
            .into_iter()
            .map(|r| {
                let role = if r.requester == org.as_str()
                    && r.requester_code.as_deref() == Some(person_code)
                {
                    "requester"
                } else {
                    "provider"
                };
                DisclosureEntry {
                    seq: r.seq_u64(),
                    at: crate::store::whole_seconds(&r.recorded_at),
                    query_id: r.query_id,
                    requester: r.requester,
                    provider: r.provider,
                    flow_id: r.flow_id,
                    procedure: r.procedure_code,
                    items: db::split_items(&r.items),
                    outcome: r.outcome,
                    reason: r.reason,
                    role: role.into(),
                }
            })
            .collect())
    }
}

async fn seal_task(log: Weak<RecordLog>, mut stop: watch::Receiver<bool>, every: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let Some(log) = log.upgrade() else { return };
        // Every node keeps the latest checkpoint for its answers, whoever signed it.
        log.refresh_latest_checkpoint().await;
        if !log.plays(crate::cluster::Role::Sealer) {
            continue;
        }
        if let Err(e) = log.seal().await {
            tracing::error!(error = %e, "records checkpoint not signed");
        }
    }
}

async fn purge_task(
    log: Weak<RecordLog>,
    mut stop: watch::Receiver<bool>,
    first: Duration,
    every: Duration,
) {
    let mut wait = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = every;
        let Some(log) = log.upgrade() else { return };
        if !log.plays(crate::cluster::Role::Retention) {
            continue;
        }
        match log.purge_expired("retention-task").await {
            Ok(r) if r.count > 0 => tracing::info!(
                first = r.first_seq,
                cut = r.cut_seq,
                count = r.count,
                "expired provision records purged"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention purge failed"),
        }
    }
}
