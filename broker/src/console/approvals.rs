//! The approval queue (R11): `GET /api/approvals`,
//! `GET /api/approvals/{query_id}`, `POST …/approve`, `POST …/reject`.
//! Only operators of the provider org reach these (the endpoint table says
//! so); another org's query answers 404. The decision itself lives in
//! [`crate::approvals`].

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::approvals::{PendingQueue, RejectRequest};
use kakehashi_interfaces::copies::ItemValue;

use crate::approvals::{self as decide, Decision};
use crate::console::endpoints::Call;
use crate::console::masking;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpResult};

/// `GET /api/approvals`: the org's queue, oldest first.
pub async fn queue(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let pending = decide::queue(&call.console.state, &session.org).await?;
    Ok(edge::json(
        StatusCode::OK,
        &PendingQueue {
            count: pending.len(),
            pending,
        },
    ))
}

/// `GET /api/approvals/{query_id}`: the values approval would release.
pub async fn detail(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let mut detail = decide::detail(
        &call.console.state,
        &session.org,
        call.params.get("query_id"),
    )
    .await?;
    if !session.privileges.number_privilege {
        // As the approval page shows them (R5).
        for value in detail.values.values_mut() {
            if let ItemValue::Text(text) = value {
                *text = masking::hide_numbers(text, false, masking::HIDDEN);
            }
        }
    }
    Ok(edge::json(StatusCode::OK, &detail))
}

/// `POST /api/approvals/{query_id}/approve`.
pub async fn approve(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    decide_and_log(call, Decision::Approve).await
}

/// `POST /api/approvals/{query_id}/reject` with `{"reason": "…"}`.
pub async fn reject(
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let body = call.read_body(req).await?;
    let request: RejectRequest = edge::parse_json(&body)?;
    decide_and_log(call, Decision::Reject(request.reason)).await
}

async fn decide_and_log(
    call: &Call<'_>,
    decision: Decision,
) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let query_id = call.params.get("query_id");
    let action = match decision {
        Decision::Approve => OpAction::Approve,
        Decision::Reject(_) => OpAction::Reject,
    };
    let outcome = decide::decide(
        &call.console.state,
        &session.org,
        query_id,
        session.user_id.as_str(),
        decision,
    )
    .await;
    let mut log = OpEntry::new(session.user_id.as_str(), action, OpResult::of(&outcome));
    log.org = Some(session.org.clone());
    log.source = Some(call.conn.peer.ip().to_string());
    // A query id is the broker's random id; anything else typed in the path
    // is not logged as a target.
    if kakehashi_interfaces::QueryId::new(query_id).is_ok() {
        log.target = Some(query_id.to_string());
    }
    if let Ok(decided) = &outcome {
        log.detail = Some(format!("record {}", decided.record_seq));
    }
    call.console.log(log).await?;
    Ok(edge::json(StatusCode::OK, &outcome?))
}
