//! Exchange endpoints beyond `whoami` (queries, persons, copies, flows).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use kakehashi_interfaces::ErrorCode;

use crate::error::BrokerError;
use crate::http::Body;
use crate::routes::RequestContext;
use crate::state::AppState;

/// Dispatches an admitted request to its handler.
pub async fn dispatch(
    _state: &Arc<AppState>,
    _ctx: &RequestContext,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    Err(BrokerError::refused(
        ErrorCode::NotFound,
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    ))
}
