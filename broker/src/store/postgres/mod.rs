//! PostgreSQL backend: the production store, shared by several broker nodes.

pub(crate) mod backend;
pub(crate) mod partitions;
pub(crate) mod planned;
pub(crate) mod record_source;
pub(crate) mod records;
pub(crate) mod shared;

use std::time::Duration;

use async_trait::async_trait;
use kakehashi_interfaces::{ErrorCode, OrgId, OrgStatus};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};

use super::{not_found, parse_org_row, NewOrg, OrgRecord, Store};
use crate::error::BrokerError;

/// `base` (`postgres://user@host/db?params`) naming database `db` instead:
/// the server, user and parameters stay. The tools and tests that make a
/// database of their own next to the one they were given use it.
pub fn url_with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (base, None),
    };
    let authority = head.find("://").map_or(0, |i| i + 3);
    let server = match head[authority..].find('/') {
        Some(i) => &head[..authority + i],
        None => head,
    };
    match query {
        Some(query) => format!("{server}/{db}?{query}"),
        None => format!("{server}/{db}"),
    }
}

/// Creates a fresh database named `prefix` and a random suffix on the
/// server of `base`; its name and URL. The tests and benchmarks that need
/// a database of their own use it (`prefix`: lowercase letters, digits and
/// `_`, so the name needs no quoting).
pub async fn create_database(base: &str, prefix: &str) -> Result<(String, String), BrokerError> {
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(BrokerError::Config(format!(
            "database prefix {prefix:?}: only lowercase letters, digits and _"
        )));
    }
    let name = format!("{prefix}_{}", hex::encode(rand::random::<[u8; 6]>()));
    let mut admin = PgConnection::connect(base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    let url = url_with_database(base, &name);
    Ok((name, url))
}

/// PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    statement_timeout: Duration,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The statement timeout of [`PgStore::open`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgStore {
    /// Connects and migrates (migrations take an advisory lock, so several
    /// nodes starting together are safe), with the default statement timeout.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, BrokerError> {
        Self::open_with(url, max_connections, DEFAULT_STATEMENT_TIMEOUT).await
    }

    /// [`PgStore::open`] with a statement timeout: every pooled connection
    /// runs with PostgreSQL's `statement_timeout` set to it and
    /// `idle_in_transaction_session_timeout` to twice it (a node cut off
    /// in the middle of a transaction loses it, and its row locks, rather
    /// than holding up every other node); waiting for a pooled connection
    /// gives up after it too. Each surfaces as `unavailable`.
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        statement_timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let base: PgConnectOptions = url.parse()?;
        // Migrations run on a connection without the timeouts: the advisory
        // lock they take waits for another node's migrations.
        let mut migrating = PgConnection::connect_with(&base).await?;
        MIGRATOR.run(&mut migrating).await?;
        let _ = migrating.close().await;
        let ms = statement_timeout.as_millis().max(1);
        // JIT off: the planner's costs over the records' month partitions
        // pass the JIT thresholds, and compiling a whole-chain read over 88
        // partitions took 5–6 s before its first row (measured with
        // `kakehashi-bench national`: the first FETCH of `records verify`
        // 6.2 s with JIT, 8 ms without); nothing here runs long enough to
        // gain from it.
        let options = base.options([
            ("statement_timeout", ms.to_string()),
            ("idle_in_transaction_session_timeout", (2 * ms).to_string()),
            ("jit", "off".to_string()),
        ]);
        // No ping before each acquire: it is a network round trip per
        // statement. A connection broken by a server restart fails its next
        // statement (answered as `unavailable`, nothing half-done) and is
        // dropped from the pool.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .acquire_timeout(statement_timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            statement_timeout,
        })
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
        // Bounded: a database cut off by a network pause does not answer
        // at all, and a readiness probe must.
        match tokio::time::timeout(
            self.statement_timeout,
            sqlx::query("SELECT 1").execute(&self.pool),
        )
        .await
        {
            Ok(done) => {
                done?;
                Ok(())
            }
            Err(_) => Err(BrokerError::refused(
                ErrorCode::Unavailable,
                "the database did not answer in time",
            )),
        }
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

#[cfg(test)]
mod tests {
    use super::{create_database, url_with_database};
    use crate::error::BrokerError;

    /// A name that would need quoting is refused before any connection.
    #[tokio::test]
    async fn a_database_prefix_needing_quotes_is_refused() {
        for prefix in ["", "Kk", "kk-test", "kk; DROP DATABASE postgres"] {
            let made = create_database("postgres://nobody@127.0.0.1:1/none", prefix).await;
            assert!(
                matches!(made, Err(BrokerError::Config(_))),
                "{prefix:?}: {made:?}"
            );
        }
    }

    #[test]
    fn a_url_names_another_database_on_the_same_server() {
        assert_eq!(
            url_with_database(
                "postgres://root@localhost/postgres?host=/run/postgresql",
                "kk"
            ),
            "postgres://root@localhost/kk?host=/run/postgresql"
        );
        assert_eq!(
            url_with_database("postgres://root@localhost", "kk"),
            "postgres://root@localhost/kk"
        );
        assert_eq!(
            url_with_database("postgres://u:p@db.example:5433/union", "kk_2"),
            "postgres://u:p@db.example:5433/kk_2"
        );
    }
}
