//! The request steps every listener runs, each a small function with one
//! job; a listener assembles them in its own short `stack` function
//! (`exchange/endpoints.rs`, `console/endpoints.rs`):
//!
//! ```text
//! observe (request id, metrics) → route → <caller check> → rate limit → body cap → endpoint
//! ```
//!
//! A step that refuses returns [`Refused`], which [`Refused::respond`] turns
//! into the one JSON error body, counts and logs.

use std::net::IpAddr;
use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use kakehashi_interfaces::{ErrorCode, OrgId};

use crate::edge::http::{self as edge, Body};
use crate::edge::limits::RateLimits;
use crate::edge::refusal::Reason;
use crate::edge::route::{self, Miss, Params, Route};
use crate::metrics::Metrics;

/// Why a request stopped before a successful answer: refused at the edge,
/// or failed in its endpoint. Each listener's `stack` returns it.
#[derive(Debug)]
pub enum Stop {
    /// Refused by an edge step.
    Refused(Refused),
    /// The endpoint failed (a refusal with its code, or a fault).
    Failed(crate::error::BrokerError),
}

impl From<Refused> for Stop {
    fn from(r: Refused) -> Self {
        Stop::Refused(r)
    }
}

impl From<crate::error::BrokerError> for Stop {
    fn from(e: crate::error::BrokerError) -> Self {
        Stop::Failed(e)
    }
}

/// A request refused at the edge: the reason counted, the error sent.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The label counted in `kakehashi_refusals_total`.
    pub reason: Reason,
    /// The error code sent.
    pub code: ErrorCode,
    /// The message sent (never a secret).
    pub message: String,
    /// Extra response headers (`Retry-After`, `Allow`).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl Refused {
    /// A refusal without extra headers.
    pub fn new(reason: Reason, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Counts, logs and answers the refusal.
    pub fn respond(self, metrics: &Metrics, request_id: &str, who: &str) -> Response<Body> {
        metrics.refusal(self.reason.as_str());
        tracing::warn!(
            reason = self.reason.as_str(),
            who,
            request_id,
            "refused request"
        );
        let mut response = edge::error_with(self.code, self.message, request_id);
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
        response
    }
}

/// Runs `serve` under a fresh request id, echoes it in `x-request-id`, and
/// counts the request and its duration under the endpoint's name.
pub async fn observe<F>(metrics: &Metrics, route_name: &'static str, serve: F) -> Response<Body>
where
    F: AsyncFnOnce(&str) -> Response<Body>,
{
    let started = Instant::now();
    let request_id = edge::request_id();
    let mut response = serve(&request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    metrics.request(route_name, response.status().as_u16(), started.elapsed());
    response
}

/// Picks the table row for a request: 404 for an unknown path, 405 (with
/// `Allow`) for a known path with another method.
pub fn route<'t, E, C>(
    table: &'t [Route<E, C>],
    method: &Method,
    path: &str,
) -> Result<(&'t Route<E, C>, Params), Refused> {
    route::find(table, method, path).map_err(|miss| match miss {
        Miss::NotFound => Refused::new(
            Reason::NotFound,
            ErrorCode::NotFound,
            format!("no endpoint {method} {path}"),
        ),
        Miss::MethodNotAllowed(allowed) => {
            let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let mut refused = Refused::new(
                Reason::MethodNotAllowed,
                ErrorCode::MethodNotAllowed,
                format!(
                    "{path} does not take {method}; it takes {}",
                    allow.join(", ")
                ),
            );
            refused.headers.push((header::ALLOW, allow.join(", ")));
            refused
        }
    })
}

/// Checks the per-address limit and, for an identified org, the per-org one.
pub fn rate_limit(
    limits: &RateLimits,
    org: Option<&OrgId>,
    address: IpAddr,
) -> Result<(), Refused> {
    limits.check(org, address).map_err(|throttled| {
        let reason = if throttled.scope == "per_org" {
            Reason::RateLimitedOrg
        } else {
            Reason::RateLimitedAddress
        };
        let mut refused = Refused::new(
            reason,
            ErrorCode::RateLimited,
            format!(
                "too many requests ({}); retry after {} s",
                throttled.scope, throttled.retry_after_secs
            ),
        );
        refused
            .headers
            .push((header::RETRY_AFTER, throttled.retry_after_secs.to_string()));
        refused
    })
}

/// The body an endpoint may read: its cap and the length the client
/// declared (parsed once, here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCap {
    /// The most bytes the endpoint takes.
    pub max: u64,
    /// `Content-Length`, if the client sent one.
    pub declared: Option<u64>,
}

/// Refuses a declared body larger than `max` before anything runs.
pub fn body_cap(headers: &HeaderMap, max: u64) -> Result<BodyCap, Refused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(Refused::new(
            Reason::BodyTooLarge,
            ErrorCode::PayloadTooLarge,
            format!(
                "request body is larger than the limit of {max} bytes; split it into smaller batches"
            ),
        ));
    }
    Ok(BodyCap { max, declared })
}

/// Refuses a body whose content type is not one of `accepted` (a missing
/// type is taken as the first).
pub fn content_type<B>(req: &Request<B>, accepted: &[&str]) -> Result<(), Refused> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if accepted.iter().any(|a| *a == essence) {
        Ok(())
    } else {
        Err(Refused::new(
            Reason::UnsupportedMediaType,
            ErrorCode::UnsupportedMediaType,
            format!(
                "this endpoint takes {}, not {essence}",
                accepted.join(" or ")
            ),
        ))
    }
}
