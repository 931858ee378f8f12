//! Sensitive answers (自動応答不可, R11): a query whose items include a
//! sensitive one waits in its provider's approval queue until an operator
//! of that org approves it — the broker then seals the answer to the
//! requester's reply key exactly as an automatic answer — or rejects it
//! with a reason. Every decision leaves a provision record naming the
//! operator; a decision is made once (a second one is refused), and the
//! requester waiting on `GET /v1/queries/{id}?wait=` is woken at once.
//!
//! A decision claims the query first (one claimant, on any node), records
//! it, and only then stores the answer: no answer is released without its
//! record.

pub use kakehashi_interfaces::approvals::{Decided, PendingDetail, PendingSummary};
use kakehashi_interfaces::envelope::{self, AnswerPayload, EnvelopeContext};
use kakehashi_interfaces::permit::SignedPermit;
use kakehashi_interfaces::{ErrorCode, OrgId, RejectionReason};
use time::OffsetDateTime;

use crate::error::BrokerError;
use crate::exchange::pipeline::{pending_context, provider_person_salt, PendingAnswer};
use crate::records::{Outcome, RecordDraft};
use crate::results::{self, PendingRow, StoredDecision};
use crate::state::AppState;

/// Most pending queries listed at once.
pub const MAX_LISTED: i64 = 500;

/// The operator's decision.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Release the answer.
    Approve,
    /// Refuse it, telling the requester why.
    Reject(RejectionReason),
}

fn corrupt(what: &str) -> BrokerError {
    BrokerError::Corrupt(format!("pending query has an invalid {what}"))
}

fn not_found() -> BrokerError {
    BrokerError::refused(
        ErrorCode::NotFound,
        "no such pending query for this org (queries of other orgs are not shown)",
    )
}

fn summary(row: &PendingRow, now: OffsetDateTime) -> Result<PendingSummary, BrokerError> {
    let permit: SignedPermit = serde_json::from_str(&row.permit).map_err(|_| corrupt("permit"))?;
    let claims = &permit.claims;
    let asked = OffsetDateTime::parse(
        &row.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| corrupt("time"))?;
    Ok(PendingSummary {
        query_id: row.id.clone(),
        requester: row.requester.clone(),
        flow_id: claims.flow_id.to_string(),
        procedure: claims.procedure.to_string(),
        items: claims.items.iter().map(|i| i.to_string()).collect(),
        asked_at: crate::store::whole_seconds(&row.created_at),
        age_secs: (now - asked).whole_seconds().max(0),
        expires_at: crate::store::whole_seconds(&row.expires_at),
    })
}

/// The provider's queue, oldest first.
pub async fn queue(state: &AppState, provider: &OrgId) -> Result<Vec<PendingSummary>, BrokerError> {
    let now = OffsetDateTime::now_utc();
    results::pending_for_provider(&state.store.pools(), provider, MAX_LISTED)
        .await?
        .iter()
        .map(|row| summary(row, now))
        .collect()
}

fn open_pending(state: &AppState, row: &PendingRow) -> Result<PendingAnswer, BrokerError> {
    let cipher = row
        .pending_cipher
        .as_deref()
        .ok_or_else(|| corrupt("payload"))?;
    let plain = state.keys.decrypt(cipher, &pending_context(&row.id))?;
    serde_json::from_slice(&plain).map_err(|_| corrupt("payload"))
}

/// One pending query of `provider` with the values approval would release.
pub async fn detail(
    state: &AppState,
    provider: &OrgId,
    query_id: &str,
) -> Result<PendingDetail, BrokerError> {
    let row = results::for_provider(&state.store.pools(), query_id, provider)
        .await?
        .ok_or_else(not_found)?;
    refuse_unless_pending(&row)?;
    let pending = open_pending(state, &row)?;
    Ok(PendingDetail {
        summary: summary(&row, OffsetDateTime::now_utc())?,
        values: pending.items,
    })
}

fn refuse_unless_pending(row: &PendingRow) -> Result<(), BrokerError> {
    let expired = row.expires_at.as_str() <= crate::store::now_rfc3339().as_str();
    match row.status.as_str() {
        "pending" if !expired => Ok(()),
        "pending" | "expired" => Err(BrokerError::refused(
            ErrorCode::Expired,
            "this query expired before a decision; nothing can be released",
        )),
        _ => Err(BrokerError::refused(
            ErrorCode::Conflict,
            "this query was already decided; a decision is made once",
        )),
    }
}

/// Approves or rejects one of `provider`'s pending queries as `operator`.
pub async fn decide(
    state: &AppState,
    provider: &OrgId,
    query_id: &str,
    operator: &str,
    decision: Decision,
) -> Result<Decided, BrokerError> {
    let pools = state.store.pools();
    let row = results::for_provider(&pools, query_id, provider)
        .await?
        .ok_or_else(not_found)?;
    refuse_unless_pending(&row)?;
    let permit: SignedPermit = serde_json::from_str(&row.permit).map_err(|_| corrupt("permit"))?;
    // Open (and seal) before claiming, so a payload that does not open
    // leaves the query pending for another look rather than stuck.
    let pending = open_pending(state, &row)?;
    // The permit commits to the provider's code without naming it (R4); the
    // code the record names is the pending answer's, and it must be the one
    // the permit was issued for.
    let salt = provider_person_salt(&state.keys, &permit.claims.permit_id)?;
    if !permit
        .claims
        .binds_provider_person(&salt, pending.provider_person_code.as_str())
    {
        return Err(corrupt("provider person"));
    }
    let provider_person_code = pending.provider_person_code.to_string();
    // Separation of duties (R11): where one org both asks and provides, the
    // person who asked does not approve.
    if permit.claims.requester == *provider && requested_by_operator(&pending, operator) {
        return Err(BrokerError::refused(
            ErrorCode::Forbidden,
            "照会した本人は承認・却下できません / the person who asked cannot decide their own query",
        ));
    }
    let sealed = match &decision {
        Decision::Approve => Some(seal(pending, &permit)?),
        Decision::Reject(_) => None,
    };
    if !results::claim(&pools, query_id, provider).await? {
        return Err(BrokerError::refused(
            ErrorCode::Conflict,
            "this query was decided by someone else just now; a decision is made once",
        ));
    }
    let claims = &permit.claims;
    let mut draft = RecordDraft::new(
        query_id,
        claims.requester.clone(),
        match decision {
            Decision::Approve => Outcome::Approved,
            Decision::Reject(_) => Outcome::Rejected,
        },
    );
    draft.permit_id = Some(claims.permit_id.to_string());
    draft.flow_id = Some(claims.flow_id.to_string());
    draft.procedure = Some(claims.procedure.to_string());
    draft.provider = Some(claims.provider.clone());
    draft.items = claims.items.iter().map(|i| i.to_string()).collect();
    draft.requester_person_code = Some(claims.requester_person_code.to_string());
    draft.provider_person_code = Some(provider_person_code);
    draft.approver = Some(operator.to_string());
    let record_seq = match state.records.append(draft).await {
        Ok(seq) => seq,
        Err(e) => {
            // Not recorded, so not decided: back in the queue.
            let _ = results::unclaim(&pools, query_id).await;
            return Err(e);
        }
    };
    let ttl = i64::try_from(state.config.exchange.result_ttl_secs).unwrap_or(i64::MAX / 4);
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
    let stored = match (&decision, &sealed) {
        (Decision::Approve, Some(envelope)) => StoredDecision::Approved { envelope },
        (Decision::Reject(reason), _) => StoredDecision::Rejected {
            reason: reason.as_str(),
        },
        (Decision::Approve, None) => {
            return Err(BrokerError::Internal(
                "an approval without its answer".into(),
            ))
        }
    };
    results::decide(&pools, query_id, &stored, operator, expires_at).await?;
    let _ = state.decisions.send(query_id.to_string());
    tracing::info!(
        query_id,
        record_seq,
        decision = decision_name(&decision),
        "pending query decided"
    );
    Ok(Decided {
        query_id: query_id.to_string(),
        decision: decision_name(&decision).to_string(),
        record_seq,
    })
}

/// Whether `operator` is the person the terminal named as asking.
fn requested_by_operator(pending: &PendingAnswer, operator: &str) -> bool {
    pending
        .requested_by
        .as_ref()
        .is_some_and(|asked| asked.as_str().eq_ignore_ascii_case(operator))
}

fn decision_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Approve => "approved",
        Decision::Reject(_) => "rejected",
    }
}

/// Seals the pending values to the requester's reply key, as an automatic
/// answer is sealed.
fn seal(pending: PendingAnswer, permit: &SignedPermit) -> Result<String, BrokerError> {
    let claims = &permit.claims;
    let context = EnvelopeContext {
        query_id: claims.query_id.clone(),
        requester: claims.requester.clone(),
        provider: claims.provider.clone(),
    };
    let payload = AnswerPayload {
        query_id: claims.query_id.clone(),
        flow_id: pending.flow_id,
        provider: claims.provider.clone(),
        items: pending.items,
    };
    let sealed = envelope::seal_answer(&pending.reply_key, &context, &payload)
        .map_err(|_| corrupt("reply key"))?;
    serde_json::to_string(&sealed).map_err(|e| BrokerError::encoding("envelope", e))
}
