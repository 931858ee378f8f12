//! Query results and pending work (R13): only the sealed envelope (or, for
//! pending sensitive answers, the selected values encrypted at rest) is kept,
//! and everything is deleted when it expires.

use kakehashi_interfaces::OrgId;

use crate::error::BrokerError;
pub use crate::store::records::rows::OwnedResult;
use crate::store::{now_rfc3339, timestamp, Pools};

/// A stored query result.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResult {
    /// Query id.
    pub id: String,
    /// Requesting org.
    pub requester: String,
    /// Providing org.
    pub provider: String,
    /// `provided`, `pending`, `rejected` or `expired`.
    pub status: String,
    /// The signed permit, JSON.
    pub permit: String,
    /// The sealed envelope, JSON, once provided.
    pub envelope: Option<String>,
    /// Expiry, fixed-width RFC 3339.
    pub expires_at: String,
    /// The operator's rejection reason, when rejected.
    pub reason: Option<String>,
}

/// A result of `requester`'s (another org's query is "not found"), whether
/// or not it expired: the caller decides what an expired one answers
/// ([`crate::exchange::pipeline::stored_to_response`]).
pub async fn get_for(
    pools: &Pools,
    id: &str,
    requester: &OrgId,
) -> Result<Option<StoredResult>, BrokerError> {
    let row: Option<StoredResult> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT id, requester, provider, status, permit, envelope, expires_at, reason FROM queries
                 WHERE id = $1 AND requester = $2",
        )
        .bind(id)
        .bind(requester.as_str())
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Turns every query whose expiry has passed into a tombstone (status
/// `expired`, no payload) that lives until `tombstone_until`, so its
/// requester hears `expired` (410), and deletes the tombstones whose time is
/// up; returns the pending queries that expired unanswered (they get an
/// `expired` record).
pub async fn sweep(
    pools: &Pools,
    now: time::OffsetDateTime,
    tombstone_until: time::OffsetDateTime,
) -> Result<Vec<(String, String, String)>, BrokerError> {
    let cut = timestamp(now);
    let expired = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        // `deciding`: an approval that stopped between its claim and its
        // answer (a crash); it expires like a pending query.
        let pending: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, requester, provider FROM queries
                 WHERE expires_at <= $1 AND status IN ('pending', 'deciding')",
        )
        .bind(&cut)
        .fetch_all(&mut *tx)
        .await?;
        // Tombstones whose time is up go; every other expired query becomes
        // one (no payload), so its requester hears `expired`, not "never was".
        sqlx::query("DELETE FROM queries WHERE expires_at <= $1 AND status = 'expired'")
            .bind(&cut)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE queries SET status = 'expired', envelope = NULL, pending_cipher = NULL,
                 reason = NULL, expires_at = $2
                 WHERE expires_at <= $1",
        )
        .bind(&cut)
        .bind(timestamp(tombstone_until))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        pending
    });
    Ok(expired)
}

/// A pending query as its provider's operators see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRow {
    /// Query id.
    pub id: String,
    /// Requesting org.
    pub requester: String,
    /// Providing org.
    pub provider: String,
    /// `pending`, `deciding`, `provided`, `rejected` or `expired`.
    pub status: String,
    /// The signed permit, JSON.
    pub permit: String,
    /// The selected values and reply key, encrypted at rest (pending only).
    pub pending_cipher: Option<Vec<u8>>,
    /// When the query was asked, fixed-width RFC 3339.
    pub created_at: String,
    /// When it expires unanswered, fixed-width RFC 3339.
    pub expires_at: String,
}

const PENDING_COLUMNS: &str =
    "id, requester, provider, status, permit, pending_cipher, created_at, expires_at";

/// The provider's queries waiting for a decision, oldest first.
pub async fn pending_for_provider(
    pools: &Pools,
    provider: &OrgId,
    limit: i64,
) -> Result<Vec<PendingRow>, BrokerError> {
    let sql = format!(
        "SELECT {PENDING_COLUMNS} FROM queries
             WHERE provider = $1 AND status = 'pending' AND expires_at > $2
             ORDER BY created_at, id LIMIT $3"
    );
    let rows: Vec<PendingRow> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(&sql)
            .bind(provider.as_str())
            .bind(now_rfc3339())
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    Ok(rows)
}

/// One of the provider's queries, whatever its status (another provider's
/// is `None`).
pub async fn for_provider(
    pools: &Pools,
    id: &str,
    provider: &OrgId,
) -> Result<Option<PendingRow>, BrokerError> {
    let sql = format!("SELECT {PENDING_COLUMNS} FROM queries WHERE id = $1 AND provider = $2");
    let row: Option<PendingRow> = crate::on_pool!(pools, write, |pool| {
        sqlx::query_as(&sql)
            .bind(id)
            .bind(provider.as_str())
            .fetch_optional(pool)
            .await?
    });
    Ok(row)
}

/// Claims a pending, unexpired query for a decision: true for exactly one
/// caller, however many decide at once (on any node).
pub async fn claim(pools: &Pools, id: &str, provider: &OrgId) -> Result<bool, BrokerError> {
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE queries SET status = 'deciding'
                 WHERE id = $1 AND provider = $2 AND status = 'pending' AND expires_at > $3",
        )
        .bind(id)
        .bind(provider.as_str())
        .bind(now_rfc3339())
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// Gives a claimed query back (its decision could not be recorded).
pub async fn unclaim(pools: &Pools, id: &str) -> Result<(), BrokerError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query("UPDATE queries SET status = 'pending' WHERE id = $1 AND status = 'deciding'")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(())
}

/// Stores a claimed query's decision: the sealed answer (approved) or the
/// reason (rejected); the values at rest are deleted either way.
pub async fn decide(
    pools: &Pools,
    id: &str,
    decision: &StoredDecision<'_>,
    decided_by: &str,
    expires_at: time::OffsetDateTime,
) -> Result<(), BrokerError> {
    let (status, envelope, reason) = match decision {
        StoredDecision::Approved { envelope } => ("provided", Some(*envelope), None),
        StoredDecision::Rejected { reason } => ("rejected", None, Some(*reason)),
    };
    crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE queries SET status = $2, envelope = $3, reason = $4, decided_by = $5,
                 pending_cipher = NULL, expires_at = $6
                 WHERE id = $1 AND status = 'deciding'",
        )
        .bind(id)
        .bind(status)
        .bind(envelope)
        .bind(reason)
        .bind(decided_by)
        .bind(timestamp(expires_at))
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(())
}

/// A decision as stored.
#[derive(Debug, Clone, Copy)]
pub enum StoredDecision<'a> {
    /// The sealed answer, JSON.
    Approved {
        /// Envelope JSON.
        envelope: &'a str,
    },
    /// The operator's reason.
    Rejected {
        /// Reason text.
        reason: &'a str,
    },
}
