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

/// Turns every answered query whose expiry has passed (provided or
/// rejected) into a tombstone (status `expired`, no payload) that lives
/// until `tombstone_until`, so its requester hears `expired` (410), and
/// deletes the tombstones whose time is up. Queries that expired unanswered
/// are left to [`expired_unanswered`]: they become tombstones together with
/// their `expired` records.
pub async fn sweep(
    pools: &Pools,
    now: time::OffsetDateTime,
    tombstone_until: time::OffsetDateTime,
) -> Result<(), BrokerError> {
    let cut = timestamp(now);
    crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM queries WHERE expires_at <= $1 AND status = 'expired'")
            .bind(&cut)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE queries SET status = 'expired', envelope = NULL, pending_cipher = NULL,
                 reason = NULL, expires_at = $2
                 WHERE expires_at <= $1 AND status IN ('provided', 'rejected')",
        )
        .bind(&cut)
        .bind(timestamp(tombstone_until))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// A query that expired unanswered, as the sweep records it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredQuery {
    /// Query id.
    pub id: String,
    /// Requesting org.
    pub requester: String,
    /// Providing org.
    pub provider: String,
    /// The signed permit, JSON: what was asked, of whom, under which flow.
    pub permit: String,
    /// The values and reply key at rest (holds the provider's person code).
    pub pending_cipher: Option<Vec<u8>>,
}

/// Up to `limit` queries that expired unanswered before `now`: pending, or
/// `deciding` — a decision that stopped between its claim and its answer (a
/// crash), whose claim's grace ([`DECIDING_GRACE`]) has passed too.
pub async fn expired_unanswered(
    pools: &Pools,
    now: time::OffsetDateTime,
    limit: i64,
) -> Result<Vec<ExpiredQuery>, BrokerError> {
    let rows = crate::on_pool!(pools, write, |pool| {
        sqlx::query_as(
            "SELECT id, requester, provider, permit, pending_cipher FROM queries
                 WHERE expires_at <= $1 AND status IN ('pending', 'deciding')
                 ORDER BY expires_at LIMIT $2",
        )
        .bind(timestamp(now))
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
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

/// How long a claimed query stays out of the sweeper's reach at least: a
/// decision claimed a moment before the query's expiry still records and
/// stores its answer, instead of the query expiring under it (which would
/// leave both an `approved` and an `expired` record). Only a decision that
/// stopped (a crash) is this late.
pub const DECIDING_GRACE: time::Duration = time::Duration::minutes(5);

/// Claims a pending, unexpired query for a decision: true for exactly one
/// caller, however many decide at once (on any node). The claim holds off
/// the query's expiry for [`DECIDING_GRACE`].
pub async fn claim(pools: &Pools, id: &str, provider: &OrgId) -> Result<bool, BrokerError> {
    let now = time::OffsetDateTime::now_utc();
    let held_until = timestamp(now + DECIDING_GRACE);
    let done = crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE queries SET status = 'deciding',
                 expires_at = CASE WHEN expires_at > $4 THEN expires_at ELSE $4 END
                 WHERE id = $1 AND provider = $2 AND status = 'pending' AND expires_at > $3",
        )
        .bind(id)
        .bind(provider.as_str())
        .bind(timestamp(now))
        .bind(&held_until)
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
    let stored = crate::on_pool!(pools, write, |pool| {
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
    if stored != 1 {
        // The claim was lost: the query expired after DECIDING_GRACE.
        return Err(BrokerError::refused(
            kakehashi_interfaces::ErrorCode::Expired,
            "この照会は判断の記録中に期限切れになりました / the query expired while its decision was recorded",
        ));
    }
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
