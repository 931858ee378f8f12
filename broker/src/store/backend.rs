//! [`Backend`]: every statement and setting whose SQLite and PostgreSQL
//! forms differ, behind one trait implemented in `sqlite/backend.rs` and
//! `postgres/backend.rs`. The modules above the store ask
//! [`crate::store::Pools::backend`] and never name a backend themselves.
//!
//! A third backend implements this trait, [`super::records::Committer`]
//! and [`super::Store`], and adds its arm to [`super::Pools`].

use std::time::Duration;

use async_trait::async_trait;

use super::records::Committer;
use super::snapshot::Snapshot;
use crate::error::BrokerError;

/// The group commit's timing unless configured: how long a commit waits
/// for queries under way, and the least time between two commits' starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTiming {
    /// `[records] commit_delay_us` unless set.
    pub delay_us: u64,
    /// `[records] commit_interval_us` unless set.
    pub interval_us: u64,
}

/// A statement with its values, as the record search builds it. Each
/// placeholder is numbered as it is written, so numbers follow their order
/// in the text (as SQLite counts them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Stmt {
    /// SQL with `$N` placeholders.
    pub sql: String,
    /// Values in placeholder order.
    pub args: Vec<Arg>,
}

impl Stmt {
    /// Appends SQL text.
    pub fn push(&mut self, s: &str) {
        self.sql.push_str(s);
    }

    /// Appends a placeholder bound to an integer.
    pub fn int(&mut self, v: i64) {
        self.args.push(Arg::Int(v));
        self.sql.push_str(&format!("${}", self.args.len()));
    }

    /// Appends a placeholder bound to a text.
    pub fn text(&mut self, v: &str) {
        self.args.push(Arg::Text(v.to_string()));
        self.sql.push_str(&format!("${}", self.args.len()));
    }
}

/// A value bound to a [`Stmt`].
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// An integer.
    Int(i64),
    /// A text.
    Text(String),
}

/// How a backend's planner is steered, for the record search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SearchDialect {
    /// The planner walks the index a statement names (SQLite's `INDEXED
    /// BY`): the search chooses its walks by counting and names them,
    /// checking a second index's entries inside the walk. Otherwise the
    /// search gives the planner plain statements and intersects two
    /// indexes' sequence numbers itself.
    pub names_indexes: bool,
    /// Records are split into month partitions (`part_month`): conditions
    /// on it keep a search to the period's months.
    pub month_partitions: bool,
    /// The clause after `records` that makes the planner walk an index
    /// (`None`: the primary key); empty where the planner takes no hints.
    pub index_hint: fn(Option<&str>) -> String,
}

impl SearchDialect {
    /// [`SearchDialect::index_hint`] for `index`.
    pub fn hint(&self, index: Option<&str>) -> String {
        (self.index_hint)(index)
    }
}

/// How the lookups' batching task reads the lookup generation
/// ([`crate::lookups`]): before each batch it reads from the database.
#[async_trait]
pub(crate) trait GenerationReader: Send {
    /// The lookup generation committed now.
    async fn read(&mut self) -> Result<i64, BrokerError>;
}

/// Reads the lookup generation through the pool: one statement, which on
/// PostgreSQL reads a snapshot taken after the statement before it.
pub(crate) struct PoolGeneration(pub super::Pools);

#[async_trait]
impl GenerationReader for PoolGeneration {
    async fn read(&mut self) -> Result<i64, BrokerError> {
        crate::store::lookup_generation::generation_now(&self.0).await
    }
}

/// What a database shared by several broker nodes offers them
/// ([`crate::cluster`]): locks held by a session of the node's own, and
/// announcements heard by every node. PostgreSQL has both; a SQLite broker
/// is one node and has neither.
#[async_trait]
pub(crate) trait SharedDatabase: Send + Sync {
    /// Opens a lock session; its end frees every lock it holds.
    async fn lock_session(&self) -> Result<Box<dyn LockSession>, BrokerError>;

    /// Listens for announcements on `channel`.
    async fn listen(&self, channel: &str) -> Result<Box<dyn Announcements>, BrokerError>;

    /// Announces `payload` on `channel` to every node listening.
    async fn announce(&self, channel: &str, payload: &str) -> Result<(), BrokerError>;
}

/// A node's session for role locks.
#[async_trait]
pub(crate) trait LockSession: Send {
    /// How many nodes hold a lock session on the database now; also the
    /// session's liveness check.
    async fn nodes(&mut self) -> Result<u32, BrokerError>;

    /// Takes lock `(class, key)` if it is free, never waiting; whether this
    /// session holds it now.
    async fn try_lock(&mut self, class: i32, key: i32) -> Result<bool, BrokerError>;

    /// Ends the session, freeing its locks at once.
    async fn close(self: Box<Self>);
}

/// Announcements heard on one listening connection.
#[async_trait]
pub(crate) trait Announcements: Send {
    /// The next announcement's payload; `None` when the connection was
    /// lost (listen again, and re-read what may have been missed).
    async fn next(&mut self) -> Result<Option<String>, BrokerError>;

    /// A round trip on the listening connection: a connection that went
    /// silent (a failover that moved the address, a host gone without
    /// closing) fails or hangs here, where `next` would wait for ever.
    async fn alive(&mut self) -> Result<(), BrokerError>;
}

/// What differs between backends, for the modules above the store.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// How long a cached org stays trusted before it is read again: on a
    /// shared database other nodes change orgs too.
    fn org_cache_ttl(&self) -> Duration;

    /// What the database offers several nodes sharing it; `None` where a
    /// broker is one node.
    fn shared(&self) -> Option<std::sync::Arc<dyn SharedDatabase>>;

    /// How long a request's work may take before it answers `unavailable`,
    /// given the statement timeout; `None`: no bound of its own.
    fn request_bound(&self, statement_timeout: Duration) -> Option<Duration>;

    /// The group commit's default timing ([`CommitTiming`]).
    fn commit_timing(&self) -> CommitTiming;

    /// The records writer's committer; `own_thread` when the writer runs
    /// on a thread of its own.
    fn committer(&self, own_thread: bool) -> Box<dyn Committer>;

    /// Starts the backend's own upkeep of the record tables, if it has any,
    /// every `every` until `stop` changes (SQLite: WAL checkpoints off the
    /// commit path).
    fn spawn_upkeep(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
        every: Duration,
    ) -> Option<tokio::task::JoinHandle<()>>;

    /// Makes the record tables ready for this month's appends.
    async fn open_records(&self) -> Result<(), BrokerError>;

    /// After personal data were erased: clears what the database keeps of
    /// the deleted rows outside the tables themselves (SQLite: the WAL,
    /// whose older frames hold the pages as they were; PostgreSQL: the
    /// dead row versions, until a vacuum).
    async fn after_erasure(&self) -> Result<(), BrokerError>;

    /// One consistent read view: a read-only transaction, REPEATABLE READ
    /// where the database offers several levels.
    async fn snapshot(&self) -> Result<Snapshot, BrokerError>;

    /// `MIN(seq)` of records at or after `at` (fixed-width text compares as
    /// time) in `(after, upto]`.
    async fn first_seq_at_or_after(
        &self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError>;

    /// The first record in `(after, upto]`, in sequence order, recorded at
    /// or after `at`: the end of the run of old records a purge may delete,
    /// found by walking the primary key from `after`.
    async fn first_young_seq(
        &self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError>;

    /// Where a purge from `after` may cut in one step without deleting row
    /// by row: the last record of the storage unit holding record
    /// `after + 1`, when that unit ends at or before `upto` and is dropped
    /// whole (PostgreSQL's month partitions); `None` where records are
    /// only deleted row by row.
    async fn whole_unit_end(&self, after: u64, upto: u64) -> Result<Option<u64>, BrokerError>;

    /// `MAX(seq)` of records before `at`, and at or after `since` when
    /// given, in `(after, upto]`.
    async fn last_seq_before(
        &self,
        at: &str,
        since: Option<&str>,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError>;

    /// How the record search steers this backend's planner.
    fn search_dialect(&self) -> SearchDialect;

    /// The plan of a statement with its values bound, one line per node.
    async fn explain(&self, st: &Stmt) -> Result<Vec<String>, BrokerError>;
}
