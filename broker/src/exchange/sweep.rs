//! The sweep of expired queries (R13), the sweeper role's work: answered
//! queries past their time become tombstones, old tombstones go, and each
//! query that expired unanswered gets its `expired` record in the same
//! transaction that makes it a tombstone.

use kakehashi_interfaces::OrgId;

use crate::error::BrokerError;
use crate::records::{Outcome, RecordDraft};
use crate::results;
use crate::state::AppState;
use crate::store::records::rows::Deletes;

/// Queries expired unanswered that one sweep transaction tombstones and
/// records at most: bounded so one commit stays short; the sweep goes on
/// with the next group.
const SWEEP_GROUP: i64 = 500;

/// One sweep (the sweeper role's work, R13): answered queries past their
/// time become tombstones and old tombstones go; each query that expired
/// unanswered becomes a tombstone in the same transaction as its `expired`
/// record, so a crash leaves both or neither and two sweeps never record a
/// query twice. Returns how many expired unanswered.
pub async fn sweep_once(state: &AppState) -> Result<usize, BrokerError> {
    let now = time::OffsetDateTime::now_utc();
    let ttl = i64::try_from(state.config.exchange.result_ttl_secs).unwrap_or(i64::MAX);
    let tombstone_until = now.checked_add(time::Duration::seconds(ttl)).unwrap_or(now);
    let pools = state.store.pools();
    results::sweep(&pools, now, tombstone_until).await?;
    crate::idempotency::sweep(&pools, now).await?;
    let mut count = 0;
    let mut conflicts = 0;
    loop {
        let expired = results::expired_unanswered(&pools, now, SWEEP_GROUP).await?;
        if expired.is_empty() {
            return Ok(count);
        }
        let group = expired.len();
        let mut ids = Vec::with_capacity(group);
        let mut drafts = Vec::with_capacity(group);
        for (query_id, requester, provider) in expired {
            match (requester.parse(), provider.parse()) {
                (Ok(requester), Ok(provider)) => {
                    drafts.push(expired_draft(&query_id, requester, provider))
                }
                // Stored data no org id parses from: expire it all the
                // same, so it does not stay pending for ever.
                _ => tracing::error!(
                    query_id,
                    "an expired query names no valid org; tombstoned without a record"
                ),
            }
            ids.push(query_id);
        }
        let deletes = Deletes::ExpiredQueries {
            ids,
            cut: crate::store::timestamp(now),
            tombstone_until: crate::store::timestamp(tombstone_until),
        };
        match state.records.delete_with_records(deletes, drafts).await {
            Ok(_) => count += group,
            // Decided or swept elsewhere meanwhile: read the group again.
            Err(e) if conflicts < 3 => {
                conflicts += 1;
                tracing::warn!(error = %e, "expired queries changed while swept; reading them again");
            }
            Err(e) => {
                return Err(BrokerError::refused(
                    kakehashi_interfaces::ErrorCode::Unavailable,
                    format!("sweeping expired queries failed: {e}"),
                ))
            }
        }
    }
}

/// The `expired` record of a query that expired unanswered.
fn expired_draft(query_id: &str, requester: OrgId, provider: OrgId) -> RecordDraft {
    RecordDraft {
        query_id: query_id.to_string(),
        permit_id: None,
        flow_id: None,
        flow_list_version: None,
        procedure: None,
        requester,
        provider: Some(provider),
        items: Vec::new(),
        requester_person_code: None,
        provider_person_code: None,
        outcome: Outcome::Expired,
        approver: None,
    }
}
