//! Storage: one [`Store`] trait, two backends (embedded SQLite, PostgreSQL).
//!
//! Each backend keeps its own migrations (`broker/migrations/<backend>`), run on
//! open. Handlers and decisions only see the trait.

mod postgres;
mod sqlite;

pub use postgres::PgStore;
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
pub fn timestamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
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
