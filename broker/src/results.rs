//! Query results and pending work (R13): only the sealed envelope (or, for
//! pending sensitive answers, the selected values encrypted at rest) is kept,
//! and everything is deleted when it expires.

use kakehashi_interfaces::OrgId;

use crate::error::BrokerError;
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
}

/// A result to store, committed with its provision record
/// ([`crate::records::RecordLog::append_answer`]).
#[derive(Debug, Clone)]
pub struct OwnedResult {
    /// Query id.
    pub id: String,
    /// Requesting org.
    pub requester: String,
    /// Providing org.
    pub provider: String,
    /// `provided` or `pending`.
    pub status: String,
    /// Permit JSON.
    pub permit: String,
    /// Envelope JSON (provided).
    pub envelope: Option<String>,
    /// Selected values encrypted at rest (pending).
    pub pending_cipher: Option<Vec<u8>>,
    /// Creation time, fixed-width RFC 3339.
    pub created_at: String,
    /// Expiry, fixed-width RFC 3339.
    pub expires_at: String,
}

impl OwnedResult {
    /// A result expiring at `expires_at`.
    pub fn new(
        id: &str,
        requester: &OrgId,
        provider: &OrgId,
        status: &str,
        permit: String,
        expires_at: time::OffsetDateTime,
    ) -> Self {
        Self {
            id: id.to_string(),
            requester: requester.to_string(),
            provider: provider.to_string(),
            status: status.to_string(),
            permit,
            envelope: None,
            pending_cipher: None,
            created_at: crate::store::now_rfc3339(),
            expires_at: timestamp(expires_at),
        }
    }
}

/// The head of the multi-row insert the record writer runs; values are
/// id, requester, provider, status, permit, envelope, pending_cipher,
/// created_at, expires_at in that order.
pub const INSERT_HEAD: &str =
    "INSERT INTO queries (id, requester, provider, status, permit, envelope, pending_cipher, created_at, expires_at) ";

/// A result visible to `requester` (another org's query, or an expired one, is "not found").
pub async fn get_for(
    pools: &Pools,
    id: &str,
    requester: &OrgId,
) -> Result<Option<StoredResult>, BrokerError> {
    let row: Option<StoredResult> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT id, requester, provider, status, permit, envelope, expires_at FROM queries
                 WHERE id = $1 AND requester = $2 AND expires_at > $3",
        )
        .bind(id)
        .bind(requester.as_str())
        .bind(now_rfc3339())
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Deletes every result whose expiry has passed; returns the ids of pending
/// queries that expired unanswered (they get an `expired` record).
pub async fn sweep(
    pools: &Pools,
    now: time::OffsetDateTime,
) -> Result<Vec<(String, String, String)>, BrokerError> {
    let cut = timestamp(now);
    let expired = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let pending: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, requester, provider FROM queries WHERE expires_at <= $1 AND status = 'pending'",
        )
        .bind(&cut)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM queries WHERE expires_at <= $1")
            .bind(&cut)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        pending
    });
    Ok(expired)
}
