//! Exchange endpoints beyond `whoami`: flows, permit keys, queries, persons,
//! copies. Handlers stay thin: parse with `interfaces`, call one module.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::query::{QueryRequest, QueryStatus};
use kakehashi_interfaces::{ErrorCode, OrgKind};

use crate::error::BrokerError;
use crate::http::{self as edge, Body};
use crate::routes::RequestContext;
use crate::state::AppState;
use crate::{batches, exchange, results};

use kakehashi_interfaces::query::MAX_WAIT_SECS;

/// Dispatches an admitted request to its handler.
pub async fn dispatch(
    state: &Arc<AppState>,
    ctx: &RequestContext,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["v1", "flows"]) => Ok(edge::json(
            StatusCode::OK,
            &batches::flow_view(state, &ctx.org),
        )),
        (Method::GET, ["v1", "permit-keys"]) => {
            Ok(edge::json(StatusCode::OK, &state.keys.permit_key_set()))
        }
        (Method::POST, ["v1", "queries"]) => {
            let body = read(state, req).await?;
            let query: QueryRequest = edge::parse_json(&body)?;
            let response = exchange::query(state, &ctx.org, query).await?;
            Ok(edge::json(StatusCode::OK, &response))
        }
        (Method::GET, ["v1", "queries", id]) => {
            let wait = wait_param(req.uri().query())?;
            get_query(state, ctx, id, wait).await
        }
        (Method::POST, ["v1", "persons"]) => {
            let body = read(state, req).await?;
            let report = batches::persons(state, &ctx.org, &body).await?;
            Ok(edge::json(StatusCode::OK, &report))
        }
        (Method::POST, ["v1", "copies"]) => {
            let body = read(state, req).await?;
            let report = batches::copies(state, &ctx.org, &body).await?;
            Ok(edge::json(StatusCode::OK, &report))
        }
        (Method::GET, ["v1", "persons", code, "records"]) => {
            if ctx.org.kind != OrgKind::Union {
                return Err(BrokerError::refused(
                    ErrorCode::Forbidden,
                    "only the union lists who received data about its insured persons",
                ));
            }
            let entries = state.disclosure(&ctx.org.id, code).await?;
            Ok(edge::json(StatusCode::OK, &entries))
        }
        _ => Err(BrokerError::refused(
            ErrorCode::NotFound,
            format!("no endpoint {} {}", req.method(), path),
        )),
    }
}

async fn read(state: &AppState, req: Request<Incoming>) -> Result<bytes::Bytes, BrokerError> {
    let limits = &state.config.limits;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    edge::read_body(
        req.into_body(),
        declared,
        limits.max_body_bytes,
        limits.body_read_timeout(),
    )
    .await
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

async fn get_query(
    state: &AppState,
    ctx: &RequestContext,
    id: &str,
    wait: u64,
) -> Result<Response<Body>, BrokerError> {
    let pools = state.store.pools();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let Some(stored) = results::get_for(&pools, id, &ctx.org.id).await? else {
            return Err(BrokerError::refused(
                ErrorCode::NotFound,
                "no such query for this org (it may have expired and been deleted)",
            ));
        };
        let response = exchange::stored_to_response(&stored)?;
        if response.status != QueryStatus::Pending || tokio::time::Instant::now() >= deadline {
            return Ok(edge::json(StatusCode::OK, &response));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
