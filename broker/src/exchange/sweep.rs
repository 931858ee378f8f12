//! The sweep of expired queries (R13), the sweeper role's work: answered
//! queries past their time become tombstones, old tombstones go, and each
//! query that expired unanswered gets its `expired` record in the same
//! transaction that makes it a tombstone.

use kakehashi_interfaces::permit::SignedPermit;
use kakehashi_interfaces::OrgId;

use crate::error::BrokerError;
use crate::exchange::pipeline::{pending_context, PendingAnswer};
use crate::records::{Outcome, RecordDraft};
use crate::results::{self, ExpiredQuery};
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
        for query in expired {
            match expired_draft(state, &query) {
                Some(draft) => drafts.push(draft),
                // Stored data no org id parses from: expire it all the
                // same, so it does not stay pending for ever.
                None => tracing::error!(
                    query_id = query.id,
                    "an expired query names no valid org; tombstoned without a record"
                ),
            }
            ids.push(query.id);
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

/// The `expired` record of a query that expired unanswered, with what its
/// permit says was asked (R14) and the provider's person code from its
/// values at rest, so a disclosure for the person lists it (R18). A permit
/// or payload that does not read leaves those fields out, never the record.
fn expired_draft(state: &AppState, query: &ExpiredQuery) -> Option<RecordDraft> {
    let requester: OrgId = query.requester.parse().ok()?;
    let provider: OrgId = query.provider.parse().ok()?;
    let mut draft = RecordDraft::new(&query.id, requester, Outcome::Expired);
    draft.provider = Some(provider);
    match serde_json::from_str::<SignedPermit>(&query.permit) {
        Ok(permit) => {
            let claims = permit.claims;
            draft.permit_id = Some(claims.permit_id.to_string());
            draft.flow_id = Some(claims.flow_id.to_string());
            draft.procedure = Some(claims.procedure.to_string());
            draft.items = claims.items.iter().map(|i| i.to_string()).collect();
            draft.requester_person_code = Some(claims.requester_person_code.to_string());
        }
        Err(_) => tracing::error!(
            query_id = query.id,
            "an expired query's permit does not read; recorded without it"
        ),
    }
    let opened = query.pending_cipher.as_deref().and_then(|cipher| {
        let plain = state
            .keys
            .decrypt(cipher, &pending_context(&query.id))
            .ok()?;
        serde_json::from_slice::<PendingAnswer>(&plain).ok()
    });
    draft.provider_person_code = opened.map(|p| p.provider_person_code.to_string());
    Some(draft)
}
