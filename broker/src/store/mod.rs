//! Storage: two backends (embedded SQLite, PostgreSQL) behind one boundary.
//!
//! - [`Store`]: orgs, and opening a backend with its own migrations
//!   (`broker/migrations/<backend>`, run on open).
//! - [`Backend`] (`backend.rs`): every statement and setting whose SQLite
//!   and PostgreSQL forms differ, asked through [`Pools::backend`].
//! - [`records::Committer`]: how the records writer commits a batch.
//! - [`backend::SharedDatabase`]: what a database shared by several nodes
//!   offers them (PostgreSQL's advisory locks and LISTEN/NOTIFY), for
//!   [`crate::cluster`]; a SQLite broker is one node.
//! - [`Snapshot`]: one consistent read view for long reads.
//! - [`on_pool!`](crate::on_pool) and [`on_snapshot!`](crate::on_snapshot):
//!   one statement text, expanded once per backend, for the many statements
//!   both backends read alike.
//!
//! `sqlite/` and `postgres/` implement the traits and hold every
//! backend-only statement. No module outside `store/` names a backend; the
//! `boundary` test below checks it. A third backend is a third folder implementing
//! [`Store`], [`Backend`] and [`records::Committer`], and an arm in
//! [`Pools`].

pub(crate) mod backend;
pub mod erasure;
pub mod lookup_generation;
pub(crate) mod postgres;
pub(crate) mod record_source;
pub(crate) mod records;
mod snapshot;
pub(crate) mod sqlite;
#[cfg(test)]
pub(crate) mod test_databases;

pub(crate) use backend::Backend;
pub use postgres::planned::Read as PlannedRead;
pub use postgres::{create_database, url_with_database, PgStore};
pub(crate) use snapshot::Snapshot;
/// The side index of person codes, kept where the database holds none
/// (SQLite: a file beside the database; PostgreSQL indexes the codes).
pub(crate) use sqlite::person_index;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use async_trait::async_trait;
use kakehashi_interfaces::{OrgId, OrgKind, OrgStatus};
use serde::Serialize;

use crate::config::{StorageConfig, StorageTarget};
use crate::error::BrokerError;

/// A registered organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgRecord {
    /// Org id (also in its certificate).
    pub id: OrgId,
    /// Union, municipality or agency.
    pub kind: OrgKind,
    /// Display name.
    pub name: String,
    /// Active or suspended.
    pub status: OrgStatus,
    /// Optional SHA-256 pin of the org's certificate (lowercase hex).
    pub cert_fingerprint: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// A new org to register.
#[derive(Debug, Clone)]
pub struct NewOrg {
    /// Org id.
    pub id: OrgId,
    /// Kind.
    pub kind: OrgKind,
    /// Display name.
    pub name: String,
    /// Optional certificate pin.
    pub cert_fingerprint: Option<String>,
}

/// The backend's connection pools, for modules that keep their own tables
/// (records, identity, copies …) and write their SQL per backend.
#[derive(Clone)]
pub enum Pools {
    /// SQLite: `write` has exactly one connection (the single writer); `read` is read-only.
    Sqlite {
        /// The single writer.
        write: sqlx::SqlitePool,
        /// Read-only connections.
        read: sqlx::SqlitePool,
    },
    /// PostgreSQL: one pool for everything.
    Postgres(sqlx::PgPool),
}

impl Pools {
    /// The SQLite database file, for a connection of a task's own outside
    /// sqlx; `None` on PostgreSQL.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self {
            Pools::Sqlite { write, .. } => {
                Some(write.connect_options().get_filename().to_path_buf())
            }
            Pools::Postgres(_) => None,
        }
    }

    /// Pools of a task's own with the same settings, opened lazily: up to
    /// `connections` PostgreSQL connections, or SQLite readers (SQLite's
    /// single writer stays shared, as there is only one). For a task that
    /// would otherwise take a connection from the shared pool for every
    /// statement, or whose PostgreSQL sockets must belong to its own runtime.
    pub fn own(&self, connections: u32) -> Pools {
        match self {
            Pools::Sqlite { write, read } => Pools::Sqlite {
                write: write.clone(),
                read: sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(connections)
                    .test_before_acquire(false)
                    .connect_lazy_with((*read.connect_options()).clone()),
            },
            // The same acquire timeout too: sqlx's default (30 s) would
            // keep a task waiting, and backing off its reconnects by up to
            // 6 s, long after a restarted database is back.
            Pools::Postgres(pool) => Pools::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(connections)
                    .test_before_acquire(false)
                    .acquire_timeout(pool.options().get_acquire_timeout())
                    .connect_lazy_with((*pool.connect_options()).clone()),
            ),
        }
    }

    /// Where `read` runs, closed with [`Pools::close_own`]: readers of its
    /// own on SQLite (four; a disclosure finds its records in the side
    /// index, `sqlite/person_index.rs`); on PostgreSQL a pool of its own
    /// whose connections have planned the read's statement
    /// (`postgres/planned.rs`).
    pub(crate) async fn planned(&self, read: PlannedRead) -> Result<Pools, BrokerError> {
        Ok(match self {
            Pools::Sqlite { .. } => self.own(4),
            Pools::Postgres(pool) => Pools::Postgres(postgres::planned::open(pool, read).await?),
        })
    }

    /// Keeps the plans of pools from [`Pools::planned`] made until `stop`
    /// (`postgres/planned.rs`); nothing to keep on SQLite.
    pub(crate) fn spawn_keep_planned(
        planned: &[(&Pools, PlannedRead)],
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let pg: Vec<_> = planned
            .iter()
            .filter_map(|(pools, read)| match pools {
                Pools::Postgres(pool) => Some((pool.clone(), *read)),
                Pools::Sqlite { .. } => None,
            })
            .collect();
        (!pg.is_empty()).then(|| tokio::spawn(postgres::planned::keep_planned(pg, stop)))
    }

    /// This backend's side of every difference ([`Backend`]).
    pub(crate) fn backend(&self) -> Box<dyn Backend + '_> {
        match self {
            Pools::Sqlite { write, read } => {
                Box::new(sqlite::backend::SqliteBackend { write, read })
            }
            Pools::Postgres(pool) => Box::new(postgres::backend::PgBackend(pool)),
        }
    }

    /// The lookups' reader of the lookup generation, on these pools (the
    /// batching task's own, from [`Pools::own`]).
    pub(crate) fn generation_reader(self) -> Box<dyn backend::GenerationReader> {
        match &self {
            Pools::Sqlite { .. } => {
                Box::new(sqlite::lookup_generation::SqliteGeneration::open(self))
            }
            Pools::Postgres(_) => Box::new(backend::PoolGeneration(self)),
        }
    }

    /// Closes what [`Pools::own`] opened (the shared SQLite writer stays open).
    pub async fn close_own(&self) {
        match self {
            Pools::Sqlite { read, .. } => read.close().await,
            Pools::Postgres(pool) => pool.close().await,
        }
    }
}

/// What every storage backend provides.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// The underlying pools.
    fn pools(&self) -> Pools;
    /// Cheap liveness probe used by `/readyz`.
    async fn ping(&self) -> Result<(), BrokerError>;

    /// Registers an org; refuses an id that exists.
    async fn add_org(&self, org: &NewOrg) -> Result<OrgRecord, BrokerError>;
    /// One org by id.
    async fn get_org(&self, id: &OrgId) -> Result<Option<OrgRecord>, BrokerError>;
    /// All orgs, ordered by id.
    async fn list_orgs(&self) -> Result<Vec<OrgRecord>, BrokerError>;
    /// Sets an org's status; `not_found` if it does not exist.
    async fn set_org_status(&self, id: &OrgId, status: OrgStatus)
        -> Result<OrgRecord, BrokerError>;
    /// Sets or clears an org's certificate pin.
    async fn set_org_pin(
        &self,
        id: &OrgId,
        fingerprint: Option<&str>,
    ) -> Result<OrgRecord, BrokerError>;
}

/// Opens the configured backend and runs its migrations.
pub async fn open(config: &StorageConfig) -> Result<Arc<dyn Store>, BrokerError> {
    Ok(match config.target()? {
        StorageTarget::Sqlite(path) => Arc::new(SqliteStore::open(&path).await?),
        StorageTarget::Postgres(url) => Arc::new(
            PgStore::open_with(&url, config.max_connections, config.statement_timeout()).await?,
        ),
    })
}

/// Current UTC time as fixed-width RFC 3339, the one timestamp format stored.
pub fn now_rfc3339() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

/// A UTC instant as fixed-width RFC 3339 with microseconds
/// (`2026-11-23T09:50:55.614263Z`), so text order is time order.
///
/// An instant whose UTC year is outside 0–9999 (reachable only through an
/// unchecked offset) is clamped to the nearest end rather than panic.
pub fn timestamp(at: time::OffsetDateTime) -> String {
    let at = match at.checked_to_offset(time::UtcOffset::UTC) {
        Some(utc) => utc,
        None if at.year() > 0 => time::PrimitiveDateTime::MAX.assume_utc(),
        None => time::PrimitiveDateTime::MIN.assume_utc(),
    };
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    at.format(&format).unwrap_or_default()
}

/// A stored fixed-width instant (`2026-11-23T09:50:55.614263Z`) as the wire
/// contract sends instants: UTC, whole seconds (`2026-11-23T09:50:55Z`).
pub fn whole_seconds(stored: &str) -> String {
    match stored.get(..19) {
        Some(head) if stored.len() > 19 => format!("{head}Z"),
        _ => stored.to_string(),
    }
}

/// Runs the same statement text on whichever backend `pools` is; the body is
/// expanded once per backend so each gets its own concrete pool type.
/// SQL must use `$N` placeholders (both drivers accept them).
#[macro_export]
macro_rules! on_pool {
    ($pools:expr, write, |$pool:ident| $body:expr) => {
        match $pools {
            $crate::store::Pools::Sqlite { write: $pool, .. } => $body,
            $crate::store::Pools::Postgres($pool) => $body,
        }
    };
    ($pools:expr, read, |$pool:ident| $body:expr) => {
        match $pools {
            $crate::store::Pools::Sqlite { read: $pool, .. } => $body,
            $crate::store::Pools::Postgres($pool) => $body,
        }
    };
}

/// A row type both backends decode.
pub trait FromBackendRow:
    for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
    + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
{
}

impl<T> FromBackendRow for T where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
{
}

/// Runs a statement built at run time (the record search's) and reads its
/// rows. Kept prepared on SQLite, where preparing is cheap and the plan
/// follows the named index anyway; not on PostgreSQL, whose best plan
/// depends on the values: after five runs it plans a kept statement once
/// for any values, by average selectivity, and a rare flow's search then
/// takes 290 ms instead of 5 at 10 M records (`kakehashi-bench search-scale`).
pub(crate) async fn fetch_all<T>(pools: &Pools, st: &backend::Stmt) -> Result<Vec<T>, BrokerError>
where
    T: Send + Unpin + FromBackendRow,
{
    use backend::Arg;
    // Kept prepared on SQLite only (see above).
    let keep = matches!(pools, Pools::Sqlite { .. });
    Ok(crate::on_pool!(pools, read, |pool| {
        let mut q = sqlx::query_as::<_, T>(&st.sql).persistent(keep);
        for a in &st.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(s) => q.bind(s.as_str()),
            };
        }
        q.fetch_all(pool).await?
    }))
}

pub(crate) fn not_found(what: &str) -> BrokerError {
    BrokerError::refused(
        kakehashi_interfaces::ErrorCode::NotFound,
        format!("{what} not found"),
    )
}

pub(crate) fn parse_org_row(
    id: String,
    kind: String,
    name: String,
    status: String,
    cert_fingerprint: Option<String>,
    created_at: String,
    updated_at: String,
) -> Result<OrgRecord, BrokerError> {
    let corrupt = |what: &str| BrokerError::Corrupt(format!("stored org has invalid {what}"));
    Ok(OrgRecord {
        id: OrgId::new(id).map_err(|_| corrupt("id"))?,
        kind: kind.parse().map_err(|_| corrupt("kind"))?,
        name,
        status: status.parse().map_err(|_| corrupt("status"))?,
        cert_fingerprint,
        created_at,
        updated_at,
    })
}

#[cfg(test)]
mod boundary {
    use std::path::Path;

    use crate::layers::tests::sources;

    /// Names that belong to one backend: its pool, connection and row
    /// types, its second driver, its folder in the store; and a branch on
    /// the backend's name.
    const BACKEND_NAMES: [&str; 17] = [
        "Pools::Sqlite",
        "Pools::Postgres",
        "sqlx::Sqlite",
        "sqlx::Postgres",
        "sqlx::sqlite",
        "sqlx::postgres",
        "SqlitePool",
        "PgPool",
        "SqliteConnection",
        "PgConnection",
        "SqliteRow",
        "PgRow",
        "rusqlite",
        "store::sqlite",
        "store::postgres",
        "backend() == \"",
        "backend() != \"",
    ];

    /// The one folder allowed to name a backend.
    const ALLOWED: [&str; 1] = ["store"];

    /// Every SQLite/PostgreSQL difference lives under `store/`: no other
    /// module (tests aside) names a backend's types, driver or folder.
    #[test]
    fn no_module_outside_the_store_names_a_backend() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut found = Vec::new();
        for file in files {
            let rel = file.strip_prefix(&src).expect("under src");
            let top = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().to_string());
            if top.is_some_and(|t| ALLOWED.contains(&t.as_str()))
                || rel.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("read source");
            // Test modules may open a backend of their own.
            let code = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
            for (n, line) in code.lines().enumerate() {
                for name in BACKEND_NAMES {
                    if line.contains(name) {
                        found.push(format!("{}:{}: {name}", rel.display(), n + 1));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "backend named outside store/:\n{}",
            found.join("\n")
        );
    }
}
