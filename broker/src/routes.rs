//! Request routing for the exchange listener. Handlers stay thin: parse with
//! `interfaces`, decide in a module, map errors at the edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::{ErrorCode, WhoAmI};

use crate::admission::AdmitError;
use crate::error::BrokerError;
use crate::http::{self as edge, Body};
use crate::state::AppState;
use crate::store::OrgRecord;
use crate::tls::PeerIdentity;

/// What the broker knows about a connection once TLS is done.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// Identity from the verified client certificate.
    pub identity: PeerIdentity,
}

/// An admitted request's context.
pub struct RequestContext {
    /// Request id for logs and error bodies.
    pub request_id: String,
    /// The admitted org.
    pub org: OrgRecord,
    /// The connection.
    pub conn: Arc<ConnInfo>,
}

/// Routes one request and records its metrics.
pub async fn handle(
    state: Arc<AppState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = edge::request_id();
    let route = route_name(req.method(), req.uri().path());
    let mut response = dispatch(&state, conn, req, route, &request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    state
        .metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

fn route_name(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (&Method::GET, "/healthz") => "healthz",
        (&Method::GET, "/readyz") => "readyz",
        (&Method::GET, "/metrics") => "metrics",
        (&Method::GET, "/v1/whoami") => "whoami",
        (&Method::GET, "/v1/flows") => "flows",
        (&Method::GET, "/v1/permit-keys") => "permit_keys",
        (&Method::POST, "/v1/queries") => "query",
        (&Method::GET, p) if p.starts_with("/v1/queries/") => "query_status",
        (&Method::POST, "/v1/persons") => "persons",
        (&Method::POST, "/v1/copies") => "copies",
        (&Method::GET, p) if p.starts_with("/v1/persons/") => "person_records",
        _ => "other",
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    route: &'static str,
    request_id: &str,
) -> Response<Body> {
    // Operational endpoints need a trusted certificate (TLS did that) but no registered org.
    match route {
        "healthz" => return edge::text(StatusCode::OK, "ok\n", "text/plain"),
        "readyz" => {
            return match state.store.ping().await {
                Ok(()) if !state.is_shutting_down() => {
                    edge::text(StatusCode::OK, "ready\n", "text/plain")
                }
                _ => edge::error_with(ErrorCode::Unavailable, "not ready".into(), request_id),
            }
        }
        "metrics" => {
            return edge::text(
                StatusCode::OK,
                state.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        _ => {}
    }

    let org = match state.directory.admit(&conn.identity).await {
        Ok(org) => org,
        Err(AdmitError::Refused(refusal)) => {
            state.metrics.refusal(refusal.reason());
            tracing::warn!(
                reason = refusal.reason(),
                peer = %conn.peer,
                org = conn.identity.org_id.as_ref().map(|o| o.as_str()).unwrap_or("-"),
                fingerprint = %conn.identity.fingerprint,
                request_id,
                "refused request"
            );
            return edge::error(&refusal.to_error(), request_id);
        }
        Err(AdmitError::Store(e)) => return internal(state, &e, request_id),
    };

    if let Err(throttled) = state.limits.check(&org.id, conn.peer.ip()) {
        let reason = if throttled.scope == "per_org" {
            "rate_limited_org"
        } else {
            "rate_limited_address"
        };
        state.metrics.refusal(reason);
        tracing::warn!(reason, org = %org.id, peer = %conn.peer, request_id, "refused request");
        let mut response = edge::error_with(
            ErrorCode::RateLimited,
            format!(
                "too many requests ({}); retry after {} s",
                throttled.scope, throttled.retry_after_secs
            ),
            request_id,
        );
        if let Ok(v) = HeaderValue::from_str(&throttled.retry_after_secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }

    // Refuse an oversized body before any handler runs, whatever the route.
    let max_body = state.config.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        state.metrics.refusal("body_too_large");
        tracing::warn!(reason = "body_too_large", org = %org.id, request_id, "refused request");
        return edge::error_with(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than the limit of {max_body} bytes; split it into smaller batches"),
            request_id,
        );
    }

    let ctx = RequestContext {
        request_id: request_id.to_string(),
        org,
        conn,
    };
    let result = match route {
        "whoami" => Ok(whoami(&ctx)),
        _ => crate::exchange_routes::dispatch(state, &ctx, req).await,
    };
    match result {
        Ok(response) => response,
        Err(e @ BrokerError::Refused { .. }) => {
            let reason = e.code().as_str();
            state.metrics.refusal(reason);
            tracing::info!(reason, org = %ctx.org.id, request_id, "refused request");
            edge::error(&e, request_id)
        }
        Err(e) => internal(state, &e, request_id),
    }
}

fn internal(state: &AppState, e: &BrokerError, request_id: &str) -> Response<Body> {
    state.metrics.refusal("internal_error");
    tracing::error!(error = %e, request_id, "internal error");
    edge::error(e, request_id)
}

fn whoami(ctx: &RequestContext) -> Response<Body> {
    edge::json(
        StatusCode::OK,
        &WhoAmI {
            org_id: ctx.org.id.clone(),
            kind: ctx.org.kind,
            name: ctx.org.name.clone(),
            certificate_fingerprint: ctx.conn.identity.fingerprint.clone(),
        },
    )
}
