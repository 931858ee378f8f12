//! Flow-list changes by two administrators (R8): `GET /api/flow-lists`,
//! `GET /api/flow-lists/{version}` (with its text and the diff from the
//! version in force), `POST /api/flow-lists` (propose), and
//! `POST /api/flow-lists/{version}/approve` (a different administrator).
//! The rules live in [`crate::flow_changes`].

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::ErrorCode;
use serde::Deserialize;

use crate::console::admin;
use crate::console::endpoints::Call;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::flow_changes;
use crate::oplog::{OpAction, OpEntry, OpResult};

/// `POST /api/flow-lists` body: the flow-list TOML, as `flows load` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeRequest {
    text: String,
}

fn version_param(call: &Call<'_>) -> Result<u64, BrokerError> {
    call.params.get("version").parse().map_err(|_| {
        BrokerError::refused(
            ErrorCode::InvalidInput,
            "version: must be a whole number (1, 2, …)",
        )
    })
}

/// `GET /api/flow-lists`: every version with its proposer and approver.
pub async fn list(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let versions = flow_changes::list(&call.console.state.store.pools()).await?;
    Ok(edge::json(
        StatusCode::OK,
        &serde_json::json!({ "versions": versions }),
    ))
}

/// `GET /api/flow-lists/{version}`: its text and how it differs from the
/// version in force.
pub async fn show(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let pools = call.console.state.store.pools();
    let version = version_param(call)?;
    let detail = flow_changes::get(&pools, version).await?;
    let in_force = flow_changes::in_force_version(&pools).await?;
    let diff = if in_force == 0 || in_force == version {
        Vec::new()
    } else {
        flow_changes::diff(&pools, in_force, version).await?
    };
    Ok(edge::json(
        StatusCode::OK,
        &serde_json::json!({ "version": detail, "in_force": in_force, "diff_from_in_force": diff }),
    ))
}

/// `POST /api/flow-lists`: propose a version.
pub async fn propose(
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let body = call.read_body(req).await?;
    let request: ProposeRequest = edge::parse_json(&body)?;
    let outcome = match admin::acting(call)?.may_change_flow_lists().await {
        Ok(()) => {
            flow_changes::propose(
                &call.console.state.store.pools(),
                &request.text,
                session.user_id.as_str(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let mut log = OpEntry::new(
        session.user_id.as_str(),
        OpAction::FlowListProposed,
        OpResult::of(&outcome),
    );
    log.org = Some(session.org.clone());
    log.source = Some(call.conn.peer.ip().to_string());
    if let Ok(proposed) = &outcome {
        log.target = Some(format!("version {}", proposed.version));
    }
    call.console.log(log).await?;
    Ok(edge::json(StatusCode::OK, &outcome?))
}

/// `POST /api/flow-lists/{version}/approve`: a second administrator puts
/// it in force, on this broker at once and on the others within seconds.
pub async fn approve(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let version = version_param(call)?;
    let state = &call.console.state;
    let outcome = match admin::acting(call)?.may_approve_flow_list(version).await {
        Ok(()) => {
            flow_changes::approve(&state.store.pools(), version, session.user_id.as_str()).await
        }
        Err(e) => Err(e),
    };
    let mut log = OpEntry::new(
        session.user_id.as_str(),
        OpAction::FlowListApproved,
        OpResult::of(&outcome),
    );
    log.org = Some(session.org.clone());
    log.source = Some(call.conn.peer.ip().to_string());
    log.target = Some(format!("version {version}"));
    call.console.log(log).await?;
    let approved = outcome?;
    state.reload_flows().await?;
    Ok(edge::json(StatusCode::OK, &approved))
}
