//! `POST /v1/queries` (one query) and `GET /v1/queries/{id}?wait=N` (its
//! status, waiting while it is pending).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::query::{
    IdempotencyKey, QueryRequest, QueryResponse, QueryStatus, IDEMPOTENCY_KEY_HEADER, MAX_WAIT_SECS,
};
use kakehashi_interfaces::{ErrorCode, QueryId};

use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::exchange::endpoints::Call;
use crate::exchange::pipeline;
use crate::idempotency::{self, Claim, Decision};
use crate::results;

/// `POST /v1/queries`.
pub async fn post(call: &Call<'_>, req: Request<Incoming>) -> Result<Response<Body>, BrokerError> {
    // While the records sealer refuses (the stored chain does not extend the
    // head it signed last), no query is answered.
    call.state.records.ensure_sealing()?;
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| {
                    BrokerError::refused(
                        ErrorCode::InvalidInput,
                        "Idempotency-Key: must be visible ASCII characters",
                    )
                })
                .and_then(|v| IdempotencyKey::new(v).map_err(BrokerError::from))
        })
        .transpose()?;
    let body = call.read_body(req).await?;
    let query: QueryRequest = edge::parse_json(&body)?;
    let mut response = match key {
        None => pipeline::query(call.state, call.org()?, query, QueryId::random()).await?,
        Some(key) => idempotent(call, &key, &body, query).await?,
    };
    // Every answer carries the latest signed checkpoint: the org witnesses it.
    response.checkpoint = call.state.records.latest_checkpoint();
    Ok(edge::json(StatusCode::OK, &response))
}

/// A query under an `Idempotency-Key`: run once, read back on a retry.
/// The claim and the query run in a task of their own, to the end even if
/// the client goes away (a killed batch, a timeout): the outcome is noted
/// under the key, so the retry reads it back instead of finding the key
/// claimed by a query that never ended.
async fn idempotent(
    call: &Call<'_>,
    key: &IdempotencyKey,
    body: &[u8],
    query: QueryRequest,
) -> Result<QueryResponse, BrokerError> {
    let task = tokio::spawn(claim_and_run(
        call.state.clone(),
        call.org()?.clone(),
        key.clone(),
        idempotency::request_hash(body),
        query,
    ));
    task.await
        .map_err(|e| BrokerError::Internal(format!("idempotent query task: {e}")))?
}

async fn claim_and_run(
    state: std::sync::Arc<crate::state::AppState>,
    org: crate::store::OrgRecord,
    key: IdempotencyKey,
    hash: String,
    query: QueryRequest,
) -> Result<QueryResponse, BrokerError> {
    let pools = state.store.pools();
    let exchange = &state.config.exchange;
    let now = time::OffsetDateTime::now_utc();
    // As long as the query's result could be asked for.
    let lifetime =
        exchange.pending_ttl_secs.max(exchange.result_ttl_secs) + exchange.result_ttl_secs;
    let expires_at = now + time::Duration::seconds(i64::try_from(lifetime).unwrap_or(i64::MAX / 4));
    match idempotency::claim(&pools, &org.id, &key, &hash, now, expires_at).await? {
        Claim::Run(query_id) => run_claimed(&state, &org, &key, query, query_id).await,
        Claim::Used(decision) => replay(&state, &org.id, decision).await,
    }
}

/// Runs a query whose key is claimed and notes its outcome under the key.
async fn run_claimed(
    state: &crate::state::AppState,
    org: &crate::store::OrgRecord,
    key: &IdempotencyKey,
    query: QueryRequest,
    query_id: QueryId,
) -> Result<QueryResponse, BrokerError> {
    let pools = state.store.pools();
    match pipeline::query(state, org, query, query_id.clone()).await {
        Ok(response) => {
            idempotency::finish(&pools, &org.id, key, &query_id, None).await?;
            Ok(response)
        }
        // A recorded refusal: a retry repeats it. `unavailable` is
        // passing, and a retry should run again.
        Err(e @ BrokerError::Refused { .. }) if e.code() != ErrorCode::Unavailable => {
            let refusal = (e.code().as_str(), e.public_message());
            idempotency::finish(
                &pools,
                &org.id,
                key,
                &query_id,
                Some((refusal.0, &refusal.1)),
            )
            .await?;
            Err(e)
        }
        // Nothing recorded: free the key for a retry.
        Err(e) => {
            if let Err(release) = idempotency::release(&pools, &org.id, key, &query_id).await {
                tracing::error!(error = %release, "idempotency key not released after a failed query");
            }
            Err(e)
        }
    }
}

/// What a request under a used key gets.
async fn replay(
    state: &crate::state::AppState,
    requester: &kakehashi_interfaces::OrgId,
    decision: Decision,
) -> Result<QueryResponse, BrokerError> {
    match decision {
        Decision::Answered(query_id) => {
            let pools = state.store.pools();
            match results::get_for(&pools, &query_id, requester).await? {
                Some(stored) => pipeline::stored_to_response(&stored),
                None => Err(BrokerError::refused(
                    ErrorCode::Expired,
                    "the query made under this Idempotency-Key expired and was deleted",
                )),
            }
        }
        Decision::Refused { code, message } => Err(BrokerError::refused(
            serde_json::from_value(serde_json::Value::String(code)).unwrap_or(ErrorCode::Internal),
            message,
        )),
        Decision::Mismatch => Err(BrokerError::refused(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different query; use a new key for a new query",
        )),
        Decision::InFlight | Decision::TakeOver => Err(BrokerError::refused(
            ErrorCode::Conflict,
            "a request with this Idempotency-Key is being answered; retry shortly",
        )),
    }
}

/// `GET /v1/queries/{id}?wait=N`.
pub async fn get(call: &Call<'_>, query: Option<&str>) -> Result<Response<Body>, BrokerError> {
    let wait = wait_param(query)?;
    let org = call.org()?;
    let id = call.params.get("id");
    let state = call.state;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        // Subscribe before reading, so a decision made between the read and
        // the wait still wakes this request.
        let mut decided = state.decisions.subscribe();
        let Some(stored) = results::get_for(&state.store.pools(), id, &org.id).await? else {
            return Err(BrokerError::refused(
                ErrorCode::NotFound,
                "no such query for this org (it may have expired and been deleted)",
            ));
        };
        let mut response = pipeline::stored_to_response(&stored)?;
        response.checkpoint = state.records.latest_checkpoint();
        if response.status != QueryStatus::Pending || tokio::time::Instant::now() >= deadline {
            return Ok(edge::json(StatusCode::OK, &response));
        }
        // Woken at once by an approval or rejection of this query; the
        // timeout also re-reads in case the pending query expired.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(5)),
            async {
                loop {
                    match decided.recv().await {
                        Ok(decided_id) if decided_id == id => break,
                        Ok(_) => continue,
                        // Lagged or closed: re-read rather than miss one.
                        Err(_) => break,
                    }
                }
            },
        )
        .await;
    }
}

fn wait_param(query: Option<&str>) -> Result<u64, BrokerError> {
    let Some(query) = query else { return Ok(0) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("wait=") {
            let secs: u64 = value.parse().map_err(|_| {
                BrokerError::refused(
                    ErrorCode::InvalidInput,
                    "wait must be a whole number of seconds",
                )
            })?;
            return Ok(secs.min(MAX_WAIT_SECS));
        }
    }
    Ok(0)
}
