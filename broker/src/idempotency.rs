//! `Idempotency-Key` on `POST /v1/queries`: a retry under the same key gets
//! the same query back (same id, same answer or the same refusal) and makes
//! no second provision record; another request under a used key is refused.
//!
//! The key is claimed in `query_keys`, with the id the query will have,
//! before the query runs; the outcome is noted once it is known. A retry
//! then finds one of:
//!
//! - the outcome: an answered query is read back from `queries` (its
//!   current state: a pending query may have been approved since), a refused
//!   one repeats its refusal;
//! - a claim without an outcome, younger than [`IN_FLIGHT_SECS`]: the first
//!   request is still running (409, retry shortly);
//! - an older claim without an outcome: the first request died before it
//!   finished. If it had committed its query (a node that died between the
//!   commit and noting the outcome), the query is found through `queries` by
//!   the claimed id, noted, and read back; otherwise the retry takes the
//!   claim over with a new query id and runs. A refusal is the one case
//!   that may be recorded twice.
//!
//! A claim is released (a retry may run at once) only when its query was
//! not committed: a commit whose answer was lost may have happened.
//!
//! Keys live as long as the result could (the pending period plus the
//! result period), then the sweeper deletes them. [`decide`] is the rule,
//! without storage.

use kakehashi_interfaces::query::IdempotencyKey;
use kakehashi_interfaces::{ErrorCode, OrgId, QueryId};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::BrokerError;
use crate::store::{timestamp, Pools};

/// A claim without an outcome younger than this is taken to be still
/// running. Longer than any query takes (a query is answered in
/// milliseconds; the request timeout is far below this).
pub const IN_FLIGHT_SECS: i64 = 120;

/// A claimed key as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    /// SHA-256 of the request body, hex.
    pub request_sha256: String,
    /// The query id the claim gave.
    pub query_id: String,
    /// When it was claimed (fixed-width RFC 3339).
    pub claimed_at: String,
    /// 1 once the outcome is noted.
    pub done: i64,
    /// The refusal's code, when the query was refused.
    pub error_code: Option<String>,
    /// The refusal's message.
    pub error_message: Option<String>,
}

/// What a request under a used key gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The query this key made: read it back.
    Answered(String),
    /// The refusal this key got, again.
    Refused {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Another body under this key.
    Mismatch,
    /// The first request is still running.
    InFlight,
    /// The first request died unfinished: run again under a new claim.
    TakeOver,
}

/// The rule for a request whose body hashes to `request_sha256`, finding
/// `row` under its key at `now`.
pub fn decide(row: &KeyRow, request_sha256: &str, now: OffsetDateTime) -> Decision {
    if row.request_sha256 != request_sha256 {
        return Decision::Mismatch;
    }
    if row.done != 0 {
        return match (&row.error_code, &row.error_message) {
            (Some(code), Some(message)) => Decision::Refused {
                code: code.clone(),
                message: message.clone(),
            },
            _ => Decision::Answered(row.query_id.clone()),
        };
    }
    let stale = timestamp(now - time::Duration::seconds(IN_FLIGHT_SECS));
    if row.claimed_at.as_str() < stale.as_str() {
        Decision::TakeOver
    } else {
        Decision::InFlight
    }
}

/// SHA-256 of a request body, hex: what "the same request" means.
pub fn request_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// How a claim went.
#[derive(Debug)]
pub enum Claim {
    /// The key was free (or taken over): run the query with this id.
    Run(QueryId),
    /// The key was used: what the request gets instead.
    Used(Decision),
}

/// Claims `key` for `requester`, or says what a request under a used key
/// gets. `expires_at` is when the key may be forgotten.
pub async fn claim(
    pools: &Pools,
    requester: &OrgId,
    key: &IdempotencyKey,
    request_sha256: &str,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<Claim, BrokerError> {
    // Twice at most: a takeover that loses to another takeover reads again.
    for _ in 0..2 {
        let query_id = QueryId::random();
        let inserted = crate::on_pool!(pools, write, |pool| {
            sqlx::query(
                "INSERT INTO query_keys
                   (requester, idempotency_key, request_sha256, query_id, claimed_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (requester, idempotency_key) DO NOTHING",
            )
            .bind(requester.as_str())
            .bind(key.as_str())
            .bind(request_sha256)
            .bind(query_id.as_str())
            .bind(timestamp(now))
            .bind(timestamp(expires_at))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if inserted == 1 {
            return Ok(Claim::Run(query_id));
        }
        let row: Option<KeyRow> = crate::on_pool!(pools, write, |pool| {
            sqlx::query_as(
                "SELECT request_sha256, query_id, claimed_at, done, error_code, error_message
                 FROM query_keys WHERE requester = $1 AND idempotency_key = $2",
            )
            .bind(requester.as_str())
            .bind(key.as_str())
            .fetch_optional(pool)
            .await?
        });
        // Swept between the insert and the read: claim again.
        let Some(row) = row else { continue };
        match decide(&row, request_sha256, now) {
            // The first request committed its query and died before
            // noting it: answer that query, never a second one.
            Decision::TakeOver if committed(pools, &row.query_id).await? => {
                note_done(pools, requester, key, &row.query_id).await?;
                return Ok(Claim::Used(Decision::Answered(row.query_id)));
            }
            Decision::TakeOver => {
                let taken = crate::on_pool!(pools, write, |pool| {
                    sqlx::query(
                        "UPDATE query_keys SET query_id = $1, claimed_at = $2, expires_at = $3
                         WHERE requester = $4 AND idempotency_key = $5
                           AND query_id = $6 AND done = 0",
                    )
                    .bind(query_id.as_str())
                    .bind(timestamp(now))
                    .bind(timestamp(expires_at))
                    .bind(requester.as_str())
                    .bind(key.as_str())
                    .bind(&row.query_id)
                    .execute(pool)
                    .await?
                    .rows_affected()
                });
                if taken == 1 {
                    tracing::warn!(
                        requester = %requester,
                        "an idempotent query that never finished is run again"
                    );
                    return Ok(Claim::Run(query_id));
                }
            }
            // The first request died after committing its answer: the id
            // claimed then names it.
            Decision::InFlight | Decision::Answered(_) | Decision::Refused { .. } => {
                return Ok(Claim::Used(
                    decision_or_committed(pools, row, request_sha256, now).await?,
                ))
            }
            Decision::Mismatch => return Ok(Claim::Used(Decision::Mismatch)),
        }
    }
    Err(BrokerError::refused(
        ErrorCode::Conflict,
        "a request with this Idempotency-Key is being answered; retry shortly",
    ))
}

/// For a claim still marked in flight, whether its query was in fact
/// answered (its result row exists): then the retry reads it back.
async fn decision_or_committed(
    pools: &Pools,
    row: KeyRow,
    request_sha256: &str,
    now: OffsetDateTime,
) -> Result<Decision, BrokerError> {
    let decision = decide(&row, request_sha256, now);
    if decision != Decision::InFlight {
        return Ok(decision);
    }
    Ok(if committed(pools, &row.query_id).await? {
        Decision::Answered(row.query_id)
    } else {
        Decision::InFlight
    })
}

/// Whether the query `query_id` was committed (its result row exists).
async fn committed(pools: &Pools, query_id: &str) -> Result<bool, BrokerError> {
    let found: Option<(String,)> = crate::on_pool!(pools, write, |pool| {
        sqlx::query_as("SELECT id FROM queries WHERE id = $1")
            .bind(query_id)
            .fetch_optional(pool)
            .await?
    });
    Ok(found.is_some())
}

/// Notes a claim whose query was found committed as answered.
async fn note_done(
    pools: &Pools,
    requester: &OrgId,
    key: &IdempotencyKey,
    query_id: &str,
) -> Result<(), BrokerError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE query_keys SET done = 1
             WHERE requester = $1 AND idempotency_key = $2 AND query_id = $3 AND done = 0",
        )
        .bind(requester.as_str())
        .bind(key.as_str())
        .bind(query_id)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(())
}

/// Notes the outcome of the query run under `key`: `refusal` when it was
/// refused (code, message), `None` when it was answered.
pub async fn finish(
    pools: &Pools,
    requester: &OrgId,
    key: &IdempotencyKey,
    query_id: &QueryId,
    refusal: Option<(&str, &str)>,
) -> Result<(), BrokerError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "UPDATE query_keys SET done = 1, error_code = $1, error_message = $2
             WHERE requester = $3 AND idempotency_key = $4 AND query_id = $5",
        )
        .bind(refusal.map(|(code, _)| code))
        .bind(refusal.map(|(_, message)| message))
        .bind(requester.as_str())
        .bind(key.as_str())
        .bind(query_id.as_str())
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(())
}

/// Releases a claim whose query failed before anything was recorded (a
/// fault, not a refusal): a retry may run it. A claim whose query was
/// committed all the same (a commit whose answer was lost) is kept, so the
/// retry reads that query back instead of recording a second.
pub async fn release(
    pools: &Pools,
    requester: &OrgId,
    key: &IdempotencyKey,
    query_id: &QueryId,
) -> Result<(), BrokerError> {
    crate::on_pool!(pools, write, |pool| {
        sqlx::query(
            "DELETE FROM query_keys
             WHERE requester = $1 AND idempotency_key = $2 AND query_id = $3 AND done = 0
               AND NOT EXISTS (SELECT 1 FROM queries WHERE id = $3)",
        )
        .bind(requester.as_str())
        .bind(key.as_str())
        .bind(query_id.as_str())
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(())
}

/// Deletes the keys whose time is up; returns how many.
pub async fn sweep(pools: &Pools, now: OffsetDateTime) -> Result<u64, BrokerError> {
    let deleted = crate::on_pool!(pools, write, |pool| {
        sqlx::query("DELETE FROM query_keys WHERE expires_at <= $1")
            .bind(timestamp(now))
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: OffsetDateTime, done: bool, error: bool) -> KeyRow {
        KeyRow {
            request_sha256: "h1".into(),
            query_id: "q1".into(),
            claimed_at: timestamp(at),
            done: i64::from(done),
            error_code: error.then(|| "no_copy".to_string()),
            error_message: error.then(|| "no copy".to_string()),
        }
    }

    #[test]
    fn the_same_request_gets_what_the_first_got() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            decide(&row(now, true, false), "h1", now),
            Decision::Answered("q1".into())
        );
        assert_eq!(
            decide(&row(now, true, true), "h1", now),
            Decision::Refused {
                code: "no_copy".into(),
                message: "no copy".into()
            }
        );
    }

    #[test]
    fn another_body_under_a_used_key_is_refused() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            decide(&row(now, true, false), "h2", now),
            Decision::Mismatch
        );
        assert_eq!(
            decide(&row(now, false, false), "h2", now),
            Decision::Mismatch
        );
    }

    #[test]
    fn an_unfinished_claim_is_in_flight_until_it_is_stale() {
        let now = OffsetDateTime::now_utc();
        let recent = now - time::Duration::seconds(IN_FLIGHT_SECS - 5);
        let old = now - time::Duration::seconds(IN_FLIGHT_SECS + 5);
        assert_eq!(
            decide(&row(recent, false, false), "h1", now),
            Decision::InFlight
        );
        assert_eq!(
            decide(&row(old, false, false), "h1", now),
            Decision::TakeOver
        );
    }
}
