//! `GET /healthz`, `GET /readyz`, `GET /metrics`: for load balancers and
//! Prometheus.

use http::{Response, StatusCode};
use kakehashi_interfaces::ErrorCode;

use crate::edge::http::{self as edge, Body};
use crate::state::AppState;

/// Liveness: the process answers.
pub fn healthz() -> Response<Body> {
    edge::text(StatusCode::OK, "ok\n", "text/plain")
}

/// Readiness: the store answers, the broker is not shutting down, and the
/// records sealer does not refuse (docs/evidence.md).
pub async fn readyz(state: &AppState, request_id: &str) -> Response<Body> {
    if state.records.sealer_refusal().is_some() {
        return edge::error_with(
            ErrorCode::Unavailable,
            "not ready: the provision records sealer refuses (see the broker's log)".into(),
            request_id,
        );
    }
    match state.store.ping().await {
        Ok(()) if !state.is_shutting_down() => edge::text(StatusCode::OK, "ready\n", "text/plain"),
        _ => edge::error_with(ErrorCode::Unavailable, "not ready".into(), request_id),
    }
}

/// Prometheus text exposition.
pub fn metrics(state: &AppState) -> Response<Body> {
    edge::text(
        StatusCode::OK,
        state.metrics.encode(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
}
