//! What PostgreSQL offers several broker nodes on one database
//! ([`SharedDatabase`]): session advisory locks on a connection of the
//! node's own (outside the pool, so no statement of the request path ever
//! runs on it), and `NOTIFY`/`LISTEN` announcements.

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::BrokerError;
use crate::store::backend::{Announcements, LockSession, SharedDatabase};

/// The `application_name` of every node's lock session: the nodes alive
/// are the sessions with this name on the database.
pub const NODE_APPLICATION_NAME: &str = "kakehashi-node";

/// The `application_name` of every node's listening connection (one per
/// node), as `pg_stat_activity` shows it.
pub const LISTENER_APPLICATION_NAME: &str = "kakehashi-listener";

/// PostgreSQL shared by the nodes whose pool this is.
pub(crate) struct PgShared(pub PgPool);

#[async_trait]
impl SharedDatabase for PgShared {
    async fn lock_session(&self) -> Result<Box<dyn LockSession>, BrokerError> {
        let options = (*self.0.connect_options())
            .clone()
            .application_name(NODE_APPLICATION_NAME);
        Ok(Box::new(PgLockSession(
            PgConnection::connect_with(&options).await?,
        )))
    }

    async fn listen(&self, channel: &str) -> Result<Box<dyn Announcements>, BrokerError> {
        // A pool of its own, of one connection, to name the connection.
        let options = (*self.0.connect_options())
            .clone()
            .application_name(LISTENER_APPLICATION_NAME);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection comes back to the caller, which re-reads after
        // listening again; sqlx's own reconnect would skip the re-read.
        listener.eager_reconnect(false);
        listener.listen(channel).await?;
        Ok(Box::new(PgAnnouncements(listener)))
    }

    async fn announce(&self, channel: &str, payload: &str) -> Result<(), BrokerError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.0)
            .await?;
        Ok(())
    }
}

/// A node's lock session: one connection of its own.
struct PgLockSession(PgConnection);

#[async_trait]
impl LockSession for PgLockSession {
    async fn nodes(&mut self) -> Result<u32, BrokerError> {
        let nodes: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(NODE_APPLICATION_NAME)
        .fetch_one(&mut self.0)
        .await?;
        Ok(u32::try_from(nodes).unwrap_or(1).max(1))
    }

    async fn try_lock(&mut self, class: i32, key: i32) -> Result<bool, BrokerError> {
        // Never waits: a lock another session holds answers false.
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(class)
            .bind(key)
            .fetch_one(&mut self.0)
            .await?)
    }

    async fn close(self: Box<Self>) {
        // Ending the session frees every lock it holds.
        let _ = self.0.close().await;
    }
}

/// Announcements heard on one listening connection.
struct PgAnnouncements(PgListener);

#[async_trait]
impl Announcements for PgAnnouncements {
    async fn next(&mut self) -> Result<Option<String>, BrokerError> {
        // Cancel-safe (sqlx reads a message whole or not at all), so the
        // caller may race it against its heartbeat.
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_string()))
    }

    async fn alive(&mut self) -> Result<(), BrokerError> {
        // Announcements that arrive meanwhile are kept for `next`.
        sqlx::query("SELECT 1").execute(&mut self.0).await?;
        Ok(())
    }
}
