//! The single writer: group commit of queued records.
//!
//! Every append is queued; the writer takes whatever is queued (up to
//! `max_batch`) and commits it in one transaction, so concurrent queries
//! share one fsync. The head row is what keeps sequence numbers gap-free and
//! the chain linear even with several broker nodes on one PostgreSQL (or the
//! command line appending beside a running broker):
//!
//! - usually the writer knows the head it committed last, and commits the
//!   batch with a head update that only succeeds if the stored head is still
//!   that one, in one step of the backend's
//!   ([`crate::store::records::Committer::commit_at`]);
//! - otherwise — first commit, a purge, a batch larger than one statement,
//!   that guard refusing because someone else moved the head, or SQLite
//!   without the writer's own connection — it locks the head row inside a
//!   transaction, reads it, and appends after it.

use kakehashi_interfaces::audit::{self, Hash, SALT_LEN};

use tokio::sync::{mpsc, oneshot};

use crate::error::BrokerError;
use crate::lookups::LookupStamp;
use crate::metrics::CommitMetrics;
use crate::store::records::rows::{NewRow, Prepared, PurgePlan};
use crate::store::records::{AtFailure, Committer, ROWS_PER_STATEMENT};
use crate::store::Pools;

/// The last head this process's writer committed: sequence and chain hash,
/// known from the rows it hashed itself rather than read back.
pub(crate) type CommittedHead = std::sync::Arc<std::sync::Mutex<Option<(u64, Hash)>>>;

/// Why an append was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotCommitted {
    /// The commit failed: the query is refused, never answered.
    Failed,
    /// The person codes or copies its answer was read from changed since.
    LookupChanged,
}

impl NewRow {
    fn record(&self, seq: u64) -> audit::Record {
        let d = &self.draft;
        let commit = |salt: &Option<[u8; SALT_LEN]>, code: &Option<String>| match (salt, code) {
            (Some(salt), Some(code)) => Some(audit::person_commitment(salt, code)),
            _ => None,
        };
        audit::Record {
            seq,
            at: self.at.clone(),
            query_id: d.query_id.clone(),
            permit_id: d.permit_id.clone(),
            flow_id: d.flow_id.clone(),
            flow_list_version: d.flow_list_version,
            procedure: d.procedure.clone(),
            requester: d.requester.as_str().to_string(),
            provider: d.provider.as_ref().map(|p| p.as_str().to_string()),
            items: d.items.clone(),
            requester_person: commit(&self.requester_salt, &d.requester_person_code),
            provider_person: commit(&self.provider_salt, &d.provider_person_code),
            outcome: d.outcome.clone(),
            approver: d.approver.clone(),
        }
    }
}

pub(crate) enum Job {
    Append {
        row: Box<NewRow>,
        done: oneshot::Sender<Result<u64, NotCommitted>>,
    },
    Purge {
        plan: Box<PurgePlan>,
        done: oneshot::Sender<Result<u64, String>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// How the writer groups appends into commits.
#[derive(Clone)]
pub(crate) struct Batching {
    /// Most records in one transaction.
    pub max_batch: usize,
    /// How long a commit may wait for queries under way to join it.
    pub commit_delay: std::time::Duration,
    /// The least time between the starts of two commits while queries are
    /// under way: a commit that comes sooner waits for the rest.
    pub commit_interval: std::time::Duration,
    /// Queries under way that will append soon ([`super::ExpectedAppend`]).
    pub coming: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Batching {
    /// How long a commit of `rows` waits once for more, `since_last_start`
    /// after the previous commit began. Only with queries under way and
    /// room left: then the longer of the delay (PostgreSQL's `commit_delay`
    /// with `commit_siblings = 1`) and what is left of the interval. Under
    /// load every commit (its fsync, its hand-offs, its WAL pages shared by
    /// all its rows) is then paid by several times more queries; the
    /// interval waits only when commits come faster than it, so at full
    /// rate, where a commit takes longer, it never does. With nothing under
    /// way, nobody waits.
    pub fn pause(
        &self,
        rows: usize,
        coming: usize,
        since_last_start: std::time::Duration,
    ) -> std::time::Duration {
        if rows == 0 || rows >= self.max_batch || coming == 0 {
            return std::time::Duration::ZERO;
        }
        self.commit_delay
            .max(self.commit_interval.saturating_sub(since_last_start))
    }
}

/// Starts the writer on a thread of its own with a single-threaded runtime,
/// so its hand-offs with the database (several per commit) are not queued
/// behind request tasks busy with cryptography on the shared workers; the
/// returned task ends when the writer does.
///
/// On PostgreSQL the thread gets its own small pool: a connection's socket
/// belongs to the runtime that opened it. SQLite connections run on their
/// own threads and are shared as they are.
pub(crate) fn spawn(
    rx: mpsc::Receiver<Job>,
    pools: Pools,
    batching: Batching,
    metrics: Option<CommitMetrics>,
    head: CommittedHead,
) -> tokio::task::JoinHandle<()> {
    let (finished, ended) = oneshot::channel::<()>();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            // Without its own thread the writer still works, only slower.
            tracing::warn!(error = %e, "records writer runs on the shared runtime");
            // Its wait for more would block a shared worker: none then.
            let batching = Batching {
                commit_delay: std::time::Duration::ZERO,
                commit_interval: std::time::Duration::ZERO,
                ..batching
            };
            let committer = pools.backend().committer(false);
            return tokio::spawn(run(rx, committer, batching, metrics, head));
        }
    };
    let thread = std::thread::Builder::new()
        .name("records-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let committer = pools.backend().committer(true);
                run(rx, committer, batching, metrics, head).await;
            });
            let _ = finished.send(());
        });
    if let Err(e) = thread {
        // The receiver went with the closure: appends now fail as
        // `unavailable`, so no query is answered without its record.
        tracing::error!(error = %e, "records writer thread could not start");
    }
    tokio::spawn(async move {
        let _ = ended.await;
    })
}

/// The writer's state between commits.
struct Writer {
    /// How this backend commits.
    committer: Box<dyn Committer>,
    metrics: Option<CommitMetrics>,
    head: CommittedHead,
    others: Others,
}

/// Whether other writers (other nodes on the same database) move the head
/// between this writer's commits. Then the common commit, guarded by the
/// head this writer committed last, would mostly be refused after the
/// database did its inserts, and the locked path run after it: while others
/// were seen lately, the locked path is taken at once.
#[derive(Debug, Default)]
struct Others {
    seen_at: Option<std::time::Instant>,
}

impl Others {
    /// How long after another writer was last seen the common commit is not
    /// tried (then one is, and refused only if they still write).
    const FOR: std::time::Duration = std::time::Duration::from_secs(1);

    fn lately(&self, now: std::time::Instant) -> bool {
        self.seen_at
            .is_some_and(|seen| now.saturating_duration_since(seen) < Self::FOR)
    }

    /// A locked commit found the head at `found`; this writer last left it
    /// at `known` (when it knew it).
    fn observe(&mut self, known: Option<u64>, found: u64, now: std::time::Instant) {
        if known.is_some_and(|known| known != found) {
            self.seen_at = Some(now);
        }
    }
}

/// Runs until closed or until every sender is gone.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Job>,
    committer: Box<dyn Committer>,
    batching: Batching,
    metrics: Option<CommitMetrics>,
    head: CommittedHead,
) {
    let max_batch = batching.max_batch;
    let mut writer = Writer {
        committer,
        metrics,
        head,
        others: Others::default(),
    };
    let mut last_start = std::time::Instant::now();
    while let Some(first) = rx.recv().await {
        let mut rows = Vec::new();
        let mut waiters = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        let mut waited = false;
        loop {
            while let Some(job) = next.take() {
                match job {
                    Job::Append { row, done } => {
                        rows.push(*row);
                        waiters.push(done);
                    }
                    Job::Purge { plan, done } => {
                        // A purge commits alone, after what was queued before it.
                        writer
                            .commit_appends(std::mem::take(&mut rows), std::mem::take(&mut waiters))
                            .await;
                        let records: Vec<&NewRow> = plan.records.iter().collect();
                        let result = writer
                            .commit(&records, Some(&plan))
                            .await
                            .map(|seqs| seqs.first().copied().flatten().unwrap_or(0))
                            .map_err(|e| e.to_string());
                        let _ = done.send(result);
                    }
                    Job::Close { done } => {
                        close = Some(done);
                        break;
                    }
                }
                if rows.len() < max_batch {
                    next = rx.try_recv().ok();
                }
            }
            let coming = batching.coming.load(std::sync::atomic::Ordering::Acquire);
            let pause = batching.pause(rows.len(), coming, last_start.elapsed());
            if close.is_some() || waited || pause.is_zero() {
                break;
            }
            waited = true;
            // The writer owns this thread (see `spawn`): a blocking sleep is the
            // sub-millisecond wait that tokio's 1 ms timer cannot give.
            std::thread::sleep(pause);
            next = rx.try_recv().ok();
        }
        last_start = std::time::Instant::now();
        writer.commit_appends(rows, waiters).await;
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

/// The lookup generations a batch's rows depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// None: every answer was read from the database.
    Nothing,
    /// One, shared by every row that has one.
    One(LookupStamp),
    /// More than one: some answers were read before a change, some after.
    Several,
}

fn one_generation(rows: &[&NewRow]) -> Guard {
    let mut guard = Guard::Nothing;
    for g in rows.iter().filter_map(|r| r.lookup_stamp) {
        guard = match guard {
            Guard::Nothing => Guard::One(g),
            Guard::One(held) if held == g => Guard::One(g),
            _ => return Guard::Several,
        };
    }
    guard
}

/// Numbers and hash-links after `head` the `rows` whose answers hold under
/// lookup generation `generation` (read from the database, or no answer
/// read from memory); the others are left out.
pub(crate) fn prepare_kept<'a>(
    rows: &[&'a NewRow],
    head: (u64, Hash),
    generation: i64,
) -> Prepared<'a> {
    let kept: Vec<&NewRow> = rows
        .iter()
        .copied()
        .filter(|r| r.lookup_stamp.is_none_or(|s| s.generation() == generation))
        .collect();
    prepare(&kept, head)
}

/// Numbers and hash-links `rows` after `head`.
pub(crate) fn prepare<'a>(rows: &[&'a NewRow], head: (u64, Hash)) -> Prepared<'a> {
    let (mut seq, mut prev) = head;
    let mut prepared = Vec::with_capacity(rows.len());
    for row in rows {
        seq += 1;
        let record = row.record(seq);
        prev = audit::chain_hash(&prev, &record.leaf_hash());
        let (outcome, reason, detail) = record.outcome.to_parts();
        prepared.push((
            *row,
            seq,
            prev,
            outcome,
            reason,
            detail.map(|v| v.to_string()),
        ));
    }
    Prepared {
        rows: prepared,
        head: (seq, prev),
    }
}

impl Writer {
    /// Commits queued appends and tells each waiter its sequence number (or
    /// that it failed: its query is then refused, never answered).
    async fn commit_appends(
        &mut self,
        rows: Vec<NewRow>,
        waiters: Vec<oneshot::Sender<Result<u64, NotCommitted>>>,
    ) {
        if rows.is_empty() {
            return;
        }
        let refs: Vec<&NewRow> = rows.iter().collect();
        let started = std::time::Instant::now();
        match self.commit(&refs, None).await {
            Ok(seqs) => {
                if let Some(m) = &self.metrics {
                    m.observe(seqs.iter().flatten().count(), started.elapsed());
                }
                for (done, seq) in waiters.into_iter().zip(seqs) {
                    let _ = done.send(seq.ok_or(NotCommitted::LookupChanged));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = rows.len(), "provision records not committed; their queries are refused");
                for done in waiters {
                    let _ = done.send(Err(NotCommitted::Failed));
                }
            }
        }
    }

    /// Commits `rows` (and a purge) in one transaction; returns their
    /// sequence numbers and, once committed, publishes the new head. A row
    /// whose answer's lookup generation no longer holds is left out (`None`).
    async fn commit(
        &mut self,
        rows: &[&NewRow],
        purge: Option<&PurgePlan>,
    ) -> Result<Vec<Option<u64>>, BrokerError> {
        self.committer.make_room(rows).await?;
        let known = self.head.lock().ok().and_then(|cell| *cell);
        let guard = one_generation(rows);
        // Both fast commits check one generation inside their transaction.
        let fast =
            !matches!(guard, Guard::Several) && !self.others.lately(std::time::Instant::now());
        let committed = match known {
            Some(head)
                if fast
                    && purge.is_none()
                    && rows.len() <= ROWS_PER_STATEMENT
                    && self.committer.has_fast_path() =>
            {
                let generation = match guard {
                    Guard::One(g) => Some(g),
                    _ => None,
                };
                match self.commit_at(rows, head, generation).await {
                    Ok(prepared) => Ok((
                        prepared
                            .rows
                            .iter()
                            .map(|(_, seq, ..)| Some(*seq))
                            .collect(),
                        Some(prepared.head),
                    )),
                    // Refused as a whole (the head moved behind this
                    // writer's back, e.g. a purge from the command line, or
                    // the lookup generation changed): nothing was written,
                    // so take the locked path.
                    Err(AtFailure::Refused(why)) => {
                        tracing::debug!(error = %why, "records head moved or commit refused; committing under the head lock");
                        self.commit_checked(rows, purge, known).await
                    }
                    Err(AtFailure::Failed(e)) => Err(e),
                }
            }
            _ => self.commit_checked(rows, purge, known).await,
        };
        let (seqs, head) = match committed {
            Ok(done) => done,
            Err(e) => {
                // The stored head is unknown now; the next commit reads it.
                if let Ok(mut cell) = self.head.lock() {
                    *cell = None;
                }
                return Err(e);
            }
        };
        if let Some(head) = head {
            if let Ok(mut cell) = self.head.lock() {
                *cell = Some(head);
            }
        }
        Ok(seqs)
    }

    /// The locked path, leaving out the rows whose answers' lookup
    /// generation changed: read under the head lock, after every one of
    /// those answers was given, so the rows kept hold as of a moment after
    /// their queries came. `known`: the head this writer left last, if it
    /// knows it.
    async fn commit_checked(
        &mut self,
        rows: &[&NewRow],
        purge: Option<&PurgePlan>,
        known: Option<(u64, Hash)>,
    ) -> Result<(Vec<Option<u64>>, Option<(u64, Hash)>), BrokerError> {
        let prepared = self
            .committer
            .commit_locked(rows, purge, prepare_kept)
            .await?;
        if let Some((_, first, ..)) = prepared.rows.first() {
            self.others.observe(
                known.map(|h| h.0),
                first.saturating_sub(1),
                std::time::Instant::now(),
            );
        }
        // The rows kept are in `rows`' order: match them by identity.
        let mut kept = prepared.rows.iter().peekable();
        let seqs = rows
            .iter()
            .map(|row| {
                let (_, seq, ..) = kept.next_if(|(k, ..)| std::ptr::eq(*k, *row))?;
                Some(*seq)
            })
            .collect();
        Ok((seqs, Some(prepared.head)))
    }

    /// The common case: the head this writer committed last is still the
    /// stored one, so the records go in guarded by it, in one step of the
    /// backend's ([`Committer::commit_at`]).
    async fn commit_at<'a>(
        &mut self,
        rows: &[&'a NewRow],
        head: (u64, Hash),
        generation: Option<LookupStamp>,
    ) -> Result<Prepared<'a>, AtFailure> {
        let prepared = prepare(rows, head);
        self.committer
            .commit_at(&prepared.rows, (head.0, &head.1), generation)
            .await?;
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::{one_generation, run, Batching, Guard, Job, NewRow, NotCommitted, Others};
    use crate::lookups::LookupStamp;
    use crate::records::{Outcome, RecordDraft};
    use crate::store::records::rows::OwnedResult;
    use crate::store::{SqliteStore, Store};
    use std::time::Duration;

    fn batching(delay_us: u64, interval_us: u64) -> Batching {
        Batching {
            max_batch: 8,
            commit_delay: Duration::from_micros(delay_us),
            commit_interval: Duration::from_micros(interval_us),
            coming: Default::default(),
        }
    }

    #[test]
    fn the_locked_path_is_taken_at_once_while_other_writers_move_the_head() {
        let t0 = std::time::Instant::now();
        let mut others = Others::default();
        assert!(!others.lately(t0), "alone at the start");
        others.observe(Some(10), 10, t0);
        assert!(!others.lately(t0), "the head was where this writer left it");
        others.observe(None, 10, t0);
        assert!(!others.lately(t0), "a head never known tells nothing");
        others.observe(Some(10), 12, t0);
        assert!(others.lately(t0), "another writer committed in between");
        assert!(others.lately(t0 + Others::FOR / 2));
        assert!(
            !others.lately(t0 + Others::FOR),
            "the common commit is tried again once they were not seen for a while"
        );
    }

    #[test]
    fn a_commit_waits_only_for_queries_under_way_with_room_left() {
        let ms = Duration::from_millis(1);
        let b = batching(1_000, 0);
        assert_eq!(b.pause(1, 1, Duration::ZERO), ms);
        assert_eq!(b.pause(7, 30, 5 * ms), ms, "a delay waits however long ago");
        assert!(b.pause(1, 0, Duration::ZERO).is_zero(), "nobody under way");
        assert!(b.pause(8, 5, Duration::ZERO).is_zero(), "the batch is full");
        assert!(
            b.pause(0, 5, Duration::ZERO).is_zero(),
            "nothing to commit yet"
        );
        assert!(
            batching(0, 0).pause(1, 5, Duration::ZERO).is_zero(),
            "both off"
        );
    }

    #[test]
    fn an_interval_waits_only_for_what_is_left_of_it() {
        let us = Duration::from_micros;
        let b = batching(0, 1_000);
        assert_eq!(b.pause(1, 1, us(400)), us(600), "the rest of the interval");
        assert!(
            b.pause(1, 1, us(1_000)).is_zero(),
            "the interval has passed"
        );
        assert!(
            b.pause(1, 1, us(2_500)).is_zero(),
            "a long commit: no wait at full rate"
        );
        assert!(b.pause(1, 0, us(100)).is_zero(), "nobody under way");
        assert!(b.pause(8, 3, us(100)).is_zero(), "the batch is full");
        // Both set: the longer wait.
        assert_eq!(batching(300, 1_000).pause(2, 2, us(900)), us(300));
        assert_eq!(batching(300, 1_000).pause(2, 2, us(200)), us(800));
    }

    /// A writer on the store's pools alone, committing at once: on SQLite,
    /// without the writer's own connection, every commit takes the locked
    /// path; on PostgreSQL a batch of mixed lookup generations does.
    fn writer_without_own_connection(
        store: &dyn Store,
    ) -> (tokio::sync::mpsc::Sender<Job>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let writer = tokio::spawn(run(
            rx,
            store.pools().backend().committer(false),
            batching(0, 0),
            None,
            Default::default(),
        ));
        (tx, writer)
    }

    async fn close(tx: tokio::sync::mpsc::Sender<Job>, writer: tokio::task::JoinHandle<()>) {
        let (done, closed) = tokio::sync::oneshot::channel();
        tx.send(Job::Close { done }).await.expect("queued");
        closed.await.expect("closed");
        writer.await.expect("writer ended");
    }

    /// Queues one append; the receiver says how it went.
    async fn queue(
        tx: &tokio::sync::mpsc::Sender<Job>,
        row: Box<NewRow>,
    ) -> tokio::sync::oneshot::Receiver<Result<u64, NotCommitted>> {
        let (done, answer) = tokio::sync::oneshot::channel();
        tx.send(Job::Append { row, done }).await.expect("queued");
        answer
    }

    /// Queues `rows` in one go (the writer takes them as one batch) and
    /// waits for each answer.
    async fn queue_all(
        tx: &tokio::sync::mpsc::Sender<Job>,
        rows: impl IntoIterator<Item = Box<NewRow>>,
    ) -> Vec<Result<u64, NotCommitted>> {
        let mut answers = Vec::new();
        for row in rows {
            answers.push(queue(tx, row).await);
        }
        let mut got = Vec::new();
        for answer in answers {
            got.push(answer.await.expect("answered"));
        }
        got
    }

    /// The first column of `sql`'s rows, as strings.
    async fn strings(store: &dyn Store, sql: &'static str) -> Vec<String> {
        let rows: Vec<(String,)> = crate::on_pool!(&store.pools(), read, |pool| {
            sqlx::query_as(sql).fetch_all(pool).await.expect("read")
        });
        rows.into_iter().map(|(s,)| s).collect()
    }

    /// The chain verifies and holds `records` records.
    async fn assert_intact(store: &dyn Store, records: u64) {
        match crate::records::verify_store(
            &store.pools(),
            &kakehashi_interfaces::audit::TrustedKeys::new(),
        )
        .await
        .expect("verify")
        {
            crate::records::Verdict::Intact(summary) => assert_eq!(summary.records, records),
            crate::records::Verdict::Broken(f) => panic!("chain broken: {f}"),
        }
    }

    #[tokio::test]
    async fn a_row_whose_lookup_generation_changed_is_left_out_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("k.db"))
            .await
            .expect("store");
        a_row_whose_lookup_generation_changed_is_left_out(&store).await;
    }

    /// On PostgreSQL the locked path reads the generation in the round trip
    /// that takes the head lock.
    #[tokio::test]
    async fn a_row_whose_lookup_generation_changed_is_left_out_postgres() {
        let Some(store) = crate::store::test_databases::fresh_postgres("writer_generation").await
        else {
            return;
        };
        a_row_whose_lookup_generation_changed_is_left_out(&store).await;
    }

    /// Answers read from memory under a lookup generation commit only while
    /// it holds: in one batch, the row under the current number and the row
    /// needing none commit, the row under an older one is left out (its
    /// query is asked again), and the chain stays whole.
    async fn a_row_whose_lookup_generation_changed_is_left_out(store: &dyn Store) {
        crate::store::lookup_generation::set_generation(&store.pools(), 7).await;
        let (tx, writer) = writer_without_own_connection(store);
        let requester = kakehashi_interfaces::OrgId::new("city-checked").expect("org id");
        let row = |i: usize, generation: Option<i64>| {
            let draft = RecordDraft::new(format!("q-{i}"), requester.clone(), Outcome::Provided);
            let mut row = NewRow::new(draft, time::OffsetDateTime::now_utc());
            row.lookup_stamp = generation.map(LookupStamp::new);
            Box::new(row)
        };
        let rows = [None, Some(7), Some(6), Some(6)];
        let got = queue_all(&tx, rows.into_iter().enumerate().map(|(i, g)| row(i, g))).await;
        assert_eq!(
            got,
            vec![
                Ok(1),
                Ok(2),
                Err(NotCommitted::LookupChanged),
                Err(NotCommitted::LookupChanged)
            ]
        );
        // A batch left out whole commits nothing; the next row follows on.
        for (i, generation) in [(4, Some(6)), (5, Some(7))] {
            let answer = queue(&tx, row(i, generation)).await;
            let expected = match generation {
                Some(7) => Ok(3),
                _ => Err(NotCommitted::LookupChanged),
            };
            assert_eq!(answer.await.expect("answered"), expected);
        }
        close(tx, writer).await;
        let ids = strings(store, "SELECT query_id FROM records ORDER BY seq").await;
        assert_eq!(ids, ["q-0", "q-1", "q-5"]);
        assert_intact(store, 3).await;
    }

    /// PostgreSQL's locked path stores every column as hashed and each kept
    /// row's result, and leaves out a stale row's result with its record:
    /// `records verify` recomputes every leaf from the stored columns.
    #[tokio::test]
    async fn the_locked_path_stores_what_verify_recomputes_postgres() {
        let Some(store) =
            crate::store::test_databases::fresh_postgres("writer_locked_columns").await
        else {
            return;
        };
        crate::store::lookup_generation::set_generation(&store.pools(), 3).await;
        let (tx, writer) = writer_without_own_connection(&store);
        let org = |id: &str| kakehashi_interfaces::OrgId::new(id).expect("org id");
        let (requester, provider) = (org("city-a"), org("union-b"));
        let now = time::OffsetDateTime::now_utc();
        let row = |i: usize, generation: Option<i64>| {
            let mut draft =
                RecordDraft::new(format!("q-{i}"), requester.clone(), Outcome::Provided);
            draft.permit_id = Some(format!("p-{i}"));
            draft.flow_id = Some("F0001".into());
            draft.flow_list_version = Some(2);
            draft.procedure = Some("P001".into());
            draft.provider = Some(provider.clone());
            draft.items = vec!["income.total".into(), "tax.class".into()];
            draft.requester_person_code = Some(format!("rc-{i}"));
            draft.provider_person_code = i.is_multiple_of(2).then(|| format!("pc-{i}"));
            draft.approver = (i == 1).then(|| "operator-1".into());
            let mut row = NewRow::new(draft, now);
            row.lookup_stamp = generation.map(LookupStamp::new);
            let mut result = OwnedResult::new(
                &format!("q-{i}"),
                &requester,
                &provider,
                "provided",
                "{}".into(),
                now + time::Duration::hours(1),
            );
            result.envelope = Some("{\"sealed\":true}".into());
            row.result = Some(result);
            Box::new(row)
        };
        let rows = [Some(3), None, Some(2), Some(3)];
        let got = queue_all(&tx, rows.into_iter().enumerate().map(|(i, g)| row(i, g))).await;
        assert_eq!(
            got,
            vec![Ok(1), Ok(2), Err(NotCommitted::LookupChanged), Ok(3)]
        );
        close(tx, writer).await;
        let ids = strings(&store, "SELECT id FROM queries ORDER BY id").await;
        assert_eq!(ids, ["q-0", "q-1", "q-3"]);
        assert_intact(&store, 3).await;
    }

    #[test]
    fn a_batch_shares_one_lookup_generation_or_takes_the_locked_path() {
        let row = |generation: Option<i64>| {
            let requester = kakehashi_interfaces::OrgId::new("city-g").expect("org id");
            let draft = RecordDraft::new("q", requester, Outcome::Provided);
            let mut row = NewRow::new(draft, time::OffsetDateTime::now_utc());
            row.lookup_stamp = generation.map(LookupStamp::new);
            row
        };
        let (none, seven, six) = (row(None), row(Some(7)), row(Some(6)));
        assert_eq!(one_generation(&[&none]), Guard::Nothing);
        assert_eq!(
            one_generation(&[&none, &seven, &seven]),
            Guard::One(LookupStamp::new(7))
        );
        assert_eq!(one_generation(&[&seven, &none, &six]), Guard::Several);
    }

    /// SQLite without the writer's own connection (it could not open, or the
    /// writer runs on the shared runtime): every commit takes the locked
    /// path, and the records still come out numbered and linked.
    #[tokio::test]
    async fn without_its_own_connection_sqlite_commits_under_the_head_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("k.db"))
            .await
            .expect("store");
        let (tx, writer) = writer_without_own_connection(&store);
        let mut seqs = Vec::new();
        for i in 0..3 {
            let requester = kakehashi_interfaces::OrgId::new("city-locked").expect("org id");
            let draft = RecordDraft::new(format!("q-{i}"), requester, Outcome::Provided);
            let (done, seq) = tokio::sync::oneshot::channel();
            let row = Box::new(NewRow::new(draft, time::OffsetDateTime::now_utc()));
            tx.send(Job::Append { row, done }).await.expect("queued");
            seqs.push(seq.await.expect("answered").expect("committed"));
        }
        assert_eq!(seqs, vec![1, 2, 3]);
        close(tx, writer).await;
        let (head,): (i64,) = sqlx::query_as("SELECT seq FROM records_head WHERE id = 1")
            .fetch_one(store.writer())
            .await
            .expect("head");
        assert_eq!(head, 3);
        assert_intact(&store, 3).await;
    }
}
