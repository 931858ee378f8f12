//! Embedded SQLite backend: one file, WAL, a busy timeout, and a single writer
//! connection so read-then-write transactions never hit SQLITE_BUSY upgrades.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

pub(crate) mod backend;
pub(crate) mod direct;
pub(crate) mod lookup_generation;
pub(crate) mod person_index;
pub(crate) mod record_source;
pub(crate) mod records;
pub(crate) mod wal;

use async_trait::async_trait;
use kakehashi_interfaces::{ErrorCode, OrgId, OrgStatus};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{not_found, now_rfc3339, parse_org_row, NewOrg, OrgRecord, Store};
use crate::error::BrokerError;

/// SQLite store: a reader pool and a one-connection writer pool.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if missing) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<Self, BrokerError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL so a committed write survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // No liveness ping before each acquire: a connection to a local file
        // does not go stale, and the ping is a round trip to the
        // connection's thread on every query.
        // The records log checkpoints the WAL in the background; the writer
        // only does when the WAL has grown far past SQLite's default.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", wal::WRITER_AUTOCHECKPOINT.to_string())
                    // Deleted rows are overwritten with zeros, in their page
                    // and in freed pages, so erased personal data (R15) and
                    // swept answers do not stay readable in the file.
                    .pragma("secure_delete", "ON"),
            )
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { read, write })
    }

    /// The single-writer pool (for modules that add tables).
    pub fn writer(&self) -> &SqlitePool {
        &self.write
    }

    /// The reader pool.
    pub fn reader(&self) -> &SqlitePool {
        &self.read
    }
}

const ORG_COLUMNS: &str = "id, kind, name, status, cert_fingerprint, created_at, updated_at";

fn org_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<OrgRecord, BrokerError> {
    parse_org_row(
        row.try_get("id")?,
        row.try_get("kind")?,
        row.try_get("name")?,
        row.try_get("status")?,
        row.try_get("cert_fingerprint")?,
        row.try_get("created_at")?,
        row.try_get("updated_at")?,
    )
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn pools(&self) -> super::Pools {
        super::Pools::Sqlite {
            write: self.write.clone(),
            read: self.read.clone(),
        }
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn add_org(&self, org: &NewOrg) -> Result<OrgRecord, BrokerError> {
        let now = now_rfc3339();
        let result = sqlx::query(
            "INSERT INTO orgs (id, kind, name, status, cert_fingerprint, created_at, updated_at)
             VALUES (?, ?, ?, 'active', ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(org.id.as_str())
        .bind(org.kind.as_str())
        .bind(&org.name)
        .bind(&org.cert_fingerprint)
        .bind(&now)
        .bind(&now)
        .execute(&self.write)
        .await?;
        if result.rows_affected() == 0 {
            return Err(BrokerError::refused(
                ErrorCode::InvalidInput,
                format!("org {} is already registered", org.id),
            ));
        }
        self.get_org(&org.id).await?.ok_or_else(|| not_found("org"))
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<OrgRecord>, BrokerError> {
        let row = sqlx::query(&format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn list_orgs(&self) -> Result<Vec<OrgRecord>, BrokerError> {
        let rows = sqlx::query(&format!("SELECT {ORG_COLUMNS} FROM orgs ORDER BY id"))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(org_from_row).collect()
    }

    async fn set_org_status(
        &self,
        id: &OrgId,
        status: OrgStatus,
    ) -> Result<OrgRecord, BrokerError> {
        let result = sqlx::query("UPDATE orgs SET status = ?, updated_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(now_rfc3339())
            .bind(id.as_str())
            .execute(&self.write)
            .await?;
        if result.rows_affected() == 0 {
            return Err(not_found("org"));
        }
        self.get_org(id).await?.ok_or_else(|| not_found("org"))
    }

    async fn set_org_pin(
        &self,
        id: &OrgId,
        fingerprint: Option<&str>,
    ) -> Result<OrgRecord, BrokerError> {
        let result =
            sqlx::query("UPDATE orgs SET cert_fingerprint = ?, updated_at = ? WHERE id = ?")
                .bind(fingerprint)
                .bind(now_rfc3339())
                .bind(id.as_str())
                .execute(&self.write)
                .await?;
        if result.rows_affected() == 0 {
            return Err(not_found("org"));
        }
        self.get_org(id).await?.ok_or_else(|| not_found("org"))
    }
}
