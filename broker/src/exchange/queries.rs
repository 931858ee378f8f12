//! `POST /v1/queries` (one query) and `GET /v1/queries/{id}?wait=N` (its
//! status, waiting while it is pending).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::query::{QueryRequest, QueryStatus, MAX_WAIT_SECS};
use kakehashi_interfaces::ErrorCode;

use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::exchange::endpoints::Call;
use crate::exchange::pipeline;
use crate::results;

/// `POST /v1/queries`.
pub async fn post(call: &Call<'_>, req: Request<Incoming>) -> Result<Response<Body>, BrokerError> {
    let body = call.read_body(req).await?;
    let query: QueryRequest = edge::parse_json(&body)?;
    let response = pipeline::query(call.state, call.org()?, query).await?;
    Ok(edge::json(StatusCode::OK, &response))
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
        let response = pipeline::stored_to_response(&stored)?;
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
