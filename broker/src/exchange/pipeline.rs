//! One query, end to end (docs/architecture.md): flow check → code mapping → permit →
//! deposited copy → sealed answer (or pending approval) → durable record →
//! answer. Every denial is recorded and returned as a typed error; a denied
//! query stores nothing but its record.

use std::collections::BTreeMap;

use kakehashi_interfaces::envelope::{self, AnswerPayload, EnvelopeContext};
use kakehashi_interfaces::permit::{self, PermitClaims};
use kakehashi_interfaces::query::{QueryRequest, QueryResponse, QueryStatus, RejectionReason};
use kakehashi_interfaces::{
    ErrorCode, ItemCode, ItemValue, KeyId, OrgStatus, PermitId, PersonCode, QueryId,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::copies;
use crate::error::BrokerError;
use crate::identity::MappedCode;
use crate::policy::{self, Asked, Denial, OrgRef};
use crate::records::{Commit, ExpectedAppend, Outcome, RecordDraft};
use crate::results::{self, OwnedResult};
use crate::state::AppState;
use crate::store::OrgRecord;

/// Times a query is answered before the broker gives up on person data that
/// keeps changing under it.
const ATTEMPTS: usize = 3;

/// Runs a query for an admitted requester under `query_id` (fresh, or
/// the one an idempotency key claimed).
///
/// The person lookup may answer from memory without asking the database
/// whether anything changed ([`crate::lookups`]); the query's record then
/// commits only if nothing did, and otherwise nothing is committed and the
/// query is answered again, the lookup confirmed first.
pub async fn query(
    state: &AppState,
    requester: &OrgRecord,
    req: QueryRequest,
    query_id: QueryId,
) -> Result<QueryResponse, BrokerError> {
    for attempt in 0..ATTEMPTS {
        match answer(state, requester, &req, &query_id, attempt > 0).await? {
            Answered::Done(done) => return *done,
            Answered::Stale => {
                tracing::debug!("person data changed while a query was answered; answering again")
            }
        }
    }
    Err(BrokerError::refused(
        ErrorCode::Unavailable,
        "the person's codes or copies kept changing while the query was answered; try again",
    ))
}

/// What a pending query keeps, encrypted at rest, until an operator decides:
/// the values that would be released, the key to seal them to, and the
/// provider's person code (the permit only commits to it; the decision's
/// record names it, R14).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PendingAnswer {
    /// The requester's reply public key, as sent with the query.
    pub reply_key: kakehashi_interfaces::ReplyPublicKey,
    /// The flow the permit names.
    pub flow_id: kakehashi_interfaces::FlowId,
    /// The asked items the provider's copy holds.
    pub items: BTreeMap<ItemCode, ItemValue>,
    /// The person's code at the provider.
    pub provider_person_code: PersonCode,
    /// The person at the terminal who asked, when the terminal said
    /// (`requested_by`): they may not approve it where their org provides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<kakehashi_interfaces::people::UserId>,
}

/// Domain of the keyed hash that makes a permit's provider-person salt.
const PROVIDER_PERSON_SALT_DOMAIN: &str = "permit-provider-person-salt";

/// The salt of a permit's commitment to the provider's person code (R4):
/// a keyed hash of the permit id under the broker's lookup key. Only the
/// broker can make it, so the requester holding the permit cannot test
/// candidate codes against the commitment; the broker can make it again for
/// the provider side of any permit it has a record of, without keeping a
/// secret per query; and every permit gets its own, so commitments to one
/// code in different permits differ.
pub fn provider_person_salt(
    keys: &crate::keys::Keyring,
    permit_id: &PermitId,
) -> Result<[u8; permit::PROVIDER_PERSON_SALT_LEN], BrokerError> {
    keys.lookup_hash(PROVIDER_PERSON_SALT_DOMAIN, permit_id.as_str().as_bytes())
        .try_into()
        .map_err(|_| BrokerError::Internal("the lookup key gave no salt".into()))
}

/// The associated data a pending answer is encrypted under.
pub fn pending_context(query_id: &str) -> Vec<u8> {
    format!("pending|{query_id}").into_bytes()
}

/// How one attempt at a query ended.
enum Answered {
    /// Recorded: the answer or the recorded refusal.
    Done(Box<Result<QueryResponse, BrokerError>>),
    /// Nothing was committed: the person data changed under the answer.
    Stale,
}

/// One attempt at a query; `fresh` confirms the lookup before answering.
/// An `Err` is a fault before anything was recorded.
async fn answer(
    state: &AppState,
    requester: &OrgRecord,
    req: &QueryRequest,
    query_id: &QueryId,
    fresh: bool,
) -> Result<Answered, BrokerError> {
    // Every way out of a query appends a record: the writer may hold a
    // commit briefly for it. Dropped just before the append.
    let coming = state.records.expect_append();
    // Instants on the wire are UTC, whole seconds (interfaces/README.md).
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let query_id = query_id.clone();
    let flows = state.flows();
    let item_names: Vec<&str> = req.items.iter().map(ItemCode::as_str).collect();

    // The draft every outcome records; filled in as the query advances.
    let mut draft = RecordDraft {
        query_id: query_id.to_string(),
        permit_id: None,
        flow_id: Some(req.flow_id.to_string()),
        flow_list_version: Some(flows.version),
        procedure: Some(req.procedure.to_string()),
        requester: requester.id.clone(),
        provider: Some(req.provider.clone()),
        items: item_names.iter().map(|s| s.to_string()).collect(),
        requester_person_code: Some(req.person.to_string()),
        provider_person_code: None,
        outcome: Outcome::Provided,
        approver: None,
    };

    let provider = match state.directory.lookup(&req.provider).await? {
        Some(p) if p.status == OrgStatus::Active => p,
        _ => {
            return deny(
                state,
                coming,
                draft,
                Denial::NotOnFlowList("the provider is not an active org").to_error(),
            )
            .await
        }
    };
    let decision = match policy::check(
        &flows,
        OrgRef {
            id: &requester.id,
            kind: requester.kind,
        },
        OrgRef {
            id: &provider.id,
            kind: provider.kind,
        },
        Asked {
            flow_id: req.flow_id.as_str(),
            procedure: req.procedure.as_str(),
            items: &item_names,
        },
        policy::japanese_day(now),
    ) {
        Ok(d) => d,
        Err(denial) => return deny(state, coming, draft, denial.to_error()).await,
    };

    // One read maps the person to the provider's code and fetches the copy.
    let Some((mapped, copy, generation)) = copies::read_for_query(
        &state.lookups,
        &state.keys,
        &requester.id,
        req.person.as_str(),
        &provider.id,
        fresh,
    )
    .await?
    else {
        return Ok(Answered::Stale);
    };
    let provider_code = match mapped {
        MappedCode::Provider(code) => code,
        MappedCode::UnknownToRequester => {
            // Also what a requester quoting another org's code gets: the codes are per org.
            draft.requester_person_code = None;
            let err = BrokerError::refused(
                ErrorCode::UnknownPerson,
                "this org has no person with that code",
            );
            return deny_read(state, coming, draft, err, generation).await;
        }
        MappedCode::NotLinkedByProvider => {
            let err = BrokerError::refused(
                ErrorCode::NoCopy,
                "the provider holds no data about this person",
            );
            return deny_read(state, coming, draft, err, generation).await;
        }
    };
    draft.provider_person_code = Some(provider_code.clone());

    let Some(copy) = copy else {
        let err = BrokerError::refused(
            ErrorCode::NoCopy,
            "the provider has deposited no copy for this person",
        );
        return deny_read(state, coming, draft, err, generation).await;
    };

    let exchange = &state.config.exchange;
    let permit_id = PermitId::random();
    draft.permit_id = Some(permit_id.to_string());
    let (key_id, signing_key) = state.keys.permit_signer();
    let claims = PermitClaims {
        permit_id: permit_id.clone(),
        query_id: query_id.clone(),
        key_id: KeyId::new(key_id).map_err(BrokerError::from)?,
        requester: requester.id.clone(),
        provider: provider.id.clone(),
        flow_id: req.flow_id.clone(),
        procedure: req.procedure.clone(),
        items: req.items.clone(),
        requester_person_code: req.person.clone(),
        // The requester receives the permit: it binds the provider's code
        // without naming it (R4).
        provider_person_commitment: permit::provider_person_commitment(
            &provider_person_salt(&state.keys, &permit_id)?,
            &provider_code,
        ),
        reply_key_sha256: hex::encode(Sha256::digest(req.reply_key.as_bytes())),
        issued_at: now,
        expires_at: now + Duration::seconds(secs(exchange.permit_ttl_secs)),
    };
    let permit = permit::sign(&signing_key, claims);
    let permit_json =
        serde_json::to_string(&permit).map_err(|e| BrokerError::encoding("permit", e))?;

    // Only the asked items the copy holds; never more than the permit names.
    let selected: BTreeMap<ItemCode, ItemValue> = req
        .items
        .iter()
        .filter_map(|item| {
            let value = copy.get(item.as_str())?;
            Some((item.clone(), serde_json::from_value(value.clone()).ok()?))
        })
        .collect();

    // What the query answers and stores: the values encrypted at rest for
    // an operator to decide on (R11), or the answer sealed to the requester.
    let context = EnvelopeContext {
        query_id: query_id.clone(),
        requester: requester.id.clone(),
        provider: provider.id.clone(),
    };
    let unusable_key = || {
        BrokerError::refused(
            ErrorCode::InvalidInput,
            "reply_key is not a usable X25519 public key",
        )
    };
    // Separation of duties (R11) where one org both asks and answers: the
    // approval refuses the person who asked, so the query must say who.
    if decision.needs_approval && requester.id == provider.id && req.requested_by.is_none() {
        let err = BrokerError::refused(
            ErrorCode::InvalidInput,
            "自団体への照会で承認が要るものには requested_by（照会した職員）が必要です / \
             requested_by (who asks) is required where an org asks itself for a sensitive item",
        );
        return deny_read(state, coming, draft, err, generation).await;
    }
    let (status, ttl, envelope, stored) = if decision.needs_approval {
        // The answer is sealed only once an operator approves: find out now
        // (one trial seal, on this rarer path) that the key takes a seal at
        // all, rather than leave an operator a query that cannot be answered.
        let trial = AnswerPayload {
            query_id: query_id.clone(),
            flow_id: req.flow_id.clone(),
            provider: provider.id.clone(),
            items: BTreeMap::new(),
        };
        if envelope::seal_answer(&req.reply_key, &context, &trial).is_err() {
            return deny_read(state, coming, draft, unusable_key(), generation).await;
        }
        let plain = serde_json::to_vec(&PendingAnswer {
            reply_key: req.reply_key.clone(),
            flow_id: req.flow_id.clone(),
            items: selected,
            provider_person_code: provider_code.parse().map_err(BrokerError::from)?,
            requested_by: req.requested_by.clone(),
        })
        .map_err(|e| BrokerError::encoding("pending answer", e))?;
        let cipher = state
            .keys
            .encrypt(&plain, &pending_context(query_id.as_str()))?;
        (
            QueryStatus::Pending,
            exchange.pending_ttl_secs,
            None,
            Stored::Pending(cipher),
        )
    } else {
        let payload = AnswerPayload {
            query_id: query_id.clone(),
            flow_id: req.flow_id.clone(),
            provider: provider.id.clone(),
            items: selected,
        };
        // A key no seal takes (a low-order point) is a denial like any
        // other, with its record (R14).
        let Ok(sealed) = envelope::seal_answer(&req.reply_key, &context, &payload) else {
            return deny_read(state, coming, draft, unusable_key(), generation).await;
        };
        let envelope_json =
            serde_json::to_string(&sealed).map_err(|e| BrokerError::encoding("envelope", e))?;
        (
            QueryStatus::Provided,
            exchange.result_ttl_secs,
            Some(sealed),
            Stored::Envelope(envelope_json),
        )
    };
    let expires_at = now + Duration::seconds(secs(ttl));
    let mut result = OwnedResult::new(
        query_id.as_str(),
        &requester.id,
        &provider.id,
        status.as_str(),
        permit_json,
        expires_at,
    );
    match stored {
        Stored::Pending(cipher) => result.pending_cipher = Some(cipher),
        Stored::Envelope(json) => result.envelope = Some(json),
    }
    draft.outcome = match status {
        QueryStatus::Pending => Outcome::Pending,
        _ => Outcome::Provided,
    };
    drop(coming);
    if state
        .records
        .append_answer(draft, Some(result), generation)
        .await?
        == Commit::Stale
    {
        return Ok(Answered::Stale);
    }
    Ok(Answered::Done(Box::new(Ok(QueryResponse {
        query_id,
        status,
        permit,
        envelope,
        expires_at,
        reason: None,
        checkpoint: None,
    }))))
}

/// What a query's result row keeps besides its permit.
enum Stored {
    /// The values and reply key, encrypted at rest, until an operator decides.
    Pending(Vec<u8>),
    /// The sealed answer, JSON.
    Envelope(String),
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 4)
}

/// Records a denial, then returns it.
async fn deny(
    state: &AppState,
    coming: ExpectedAppend<'_>,
    draft: RecordDraft,
    err: BrokerError,
) -> Result<Answered, BrokerError> {
    deny_read(state, coming, draft, err, None).await
}

/// Records a denial that rests on what the lookup found (under `generation`
/// if that came from memory unconfirmed), then returns it.
async fn deny_read(
    state: &AppState,
    coming: ExpectedAppend<'_>,
    mut draft: RecordDraft,
    err: BrokerError,
    generation: Option<crate::lookups::LookupStamp>,
) -> Result<Answered, BrokerError> {
    draft.outcome = Outcome::Denied {
        reason: err.code().as_str().to_string(),
    };
    draft.permit_id = None;
    drop(coming);
    Ok(
        match state.records.append_answer(draft, None, generation).await? {
            Commit::Committed(_) => Answered::Done(Box::new(Err(err))),
            Commit::Stale => Answered::Stale,
        },
    )
}

/// Why an expired query answers 410; the tombstone keeps nothing of it.
fn expired(status: &str) -> BrokerError {
    let message = match status {
        "pending" | "deciding" => {
            "the query expired before the provider's operator decided; ask again if still needed"
        }
        _ => "the query's result expired and was deleted (R13); ask again if still needed",
    };
    BrokerError::refused(ErrorCode::Expired, message)
}

/// A stored result as the requester sees it: an expired query answers
/// `expired` (410) for `result_ttl_secs` after it expired, then `not_found`.
pub fn stored_to_response(stored: &results::StoredResult) -> Result<QueryResponse, BrokerError> {
    let corrupt =
        |what: &str| BrokerError::Corrupt(format!("stored query result has an invalid {what}"));
    // Past its expiry (swept into a tombstone or not yet): `expired` (410).
    if stored.expires_at.as_str() <= crate::store::now_rfc3339().as_str() {
        return Err(expired(&stored.status));
    }
    let status = match stored.status.as_str() {
        "provided" => QueryStatus::Provided,
        // `deciding`: an operator's decision is being recorded.
        "pending" | "deciding" => QueryStatus::Pending,
        "rejected" => QueryStatus::Rejected,
        "expired" => return Err(expired("expired")),
        _ => return Err(corrupt("status")),
    };
    let reason = match (status, &stored.reason) {
        (QueryStatus::Rejected, Some(text)) => {
            // A reason stored before reasons were refused with an Individual
            // Number in them still answers, with the number left out.
            let shown = kakehashi_interfaces::individual_number::replace_in(text, "（個人番号）");
            Some(RejectionReason::new(&shown).map_err(|_| corrupt("rejection reason"))?)
        }
        (QueryStatus::Rejected, None) => return Err(corrupt("rejection reason")),
        _ => None,
    };
    Ok(QueryResponse {
        query_id: stored.id.parse().map_err(|_| corrupt("id"))?,
        status,
        permit: serde_json::from_str(&stored.permit).map_err(|_| corrupt("permit"))?,
        envelope: match &stored.envelope {
            Some(e) => Some(serde_json::from_str(e).map_err(|_| corrupt("envelope"))?),
            None => None,
        },
        expires_at: OffsetDateTime::parse(
            &stored.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| corrupt("expiry"))?
        .replace_nanosecond(0)
        .map_err(|_| corrupt("expiry"))?,
        reason,
        checkpoint: None,
    })
}
