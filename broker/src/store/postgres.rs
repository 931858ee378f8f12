//! PostgreSQL backend: the production store, shared by several broker nodes.

use std::time::Duration;

use async_trait::async_trait;
use kakehashi_interfaces::{ErrorCode, OrgId, OrgStatus};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use super::{not_found, parse_org_row, NewOrg, OrgRecord, Store};
use crate::error::BrokerError;

/// PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PgStore {
    /// Connects and migrates (migrations take an advisory lock, so several
    /// nodes starting together are safe).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, BrokerError> {
        // No ping before each acquire: it is a network round trip per
        // statement. A connection broken by a server restart fails its next
        // statement (answered as `unavailable`, nothing half-done) and is
        // dropped from the pool.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool (for modules that add tables).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

// Timestamps are returned as RFC 3339 text so both backends hand out the same shape.
const ORG_COLUMNS: &str = "id, kind, name, status, cert_fingerprint, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at, \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS updated_at";

fn org_from_row(row: &sqlx::postgres::PgRow) -> Result<OrgRecord, BrokerError> {
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
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn pools(&self) -> super::Pools {
        super::Pools::Postgres(self.pool.clone())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn add_org(&self, org: &NewOrg) -> Result<OrgRecord, BrokerError> {
        let row = sqlx::query(&format!(
            "INSERT INTO orgs (id, kind, name, status, cert_fingerprint, created_at, updated_at)
             VALUES ($1, $2, $3, 'active', $4, now(), now()) ON CONFLICT (id) DO NOTHING
             RETURNING {ORG_COLUMNS}"
        ))
        .bind(org.id.as_str())
        .bind(org.kind.as_str())
        .bind(&org.name)
        .bind(&org.cert_fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => org_from_row(&row),
            None => Err(BrokerError::refused(
                ErrorCode::InvalidInput,
                format!("org {} is already registered", org.id),
            )),
        }
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<OrgRecord>, BrokerError> {
        let row = sqlx::query(&format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn list_orgs(&self) -> Result<Vec<OrgRecord>, BrokerError> {
        let rows = sqlx::query(&format!("SELECT {ORG_COLUMNS} FROM orgs ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(org_from_row).collect()
    }

    async fn set_org_status(
        &self,
        id: &OrgId,
        status: OrgStatus,
    ) -> Result<OrgRecord, BrokerError> {
        let row = sqlx::query(&format!(
            "UPDATE orgs SET status = $1, updated_at = now() WHERE id = $2 RETURNING {ORG_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(org_from_row)
            .transpose()?
            .ok_or_else(|| not_found("org"))
    }

    async fn set_org_pin(
        &self,
        id: &OrgId,
        fingerprint: Option<&str>,
    ) -> Result<OrgRecord, BrokerError> {
        let row = sqlx::query(&format!(
            "UPDATE orgs SET cert_fingerprint = $1, updated_at = now() WHERE id = $2 RETURNING {ORG_COLUMNS}"
        ))
        .bind(fingerprint)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(org_from_row)
            .transpose()?
            .ok_or_else(|| not_found("org"))
    }
}
