//! Every endpoint of the exchange listener, in one table, and the stack a
//! request goes through to reach one:
//!
//! ```text
//! observe → route → admission (org certificate) → rate limit → body cap → endpoint
//! ```
//!
//! To add an endpoint: a variant of [`Endpoint`], a row in [`TABLE`], and an
//! arm in [`run`] calling its file.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::{ErrorCode, OrgKind, WhoAmI};

use crate::edge::admission::AdmitError;
use crate::edge::http::{self as edge, Body};
use crate::edge::layers::{self, BodyCap, Refused, Stop};
use crate::edge::route::{BodyLimit, Params, Route};
use crate::edge::standing;
use crate::error::BrokerError;
use crate::exchange::{batches, disclosure, flows, ops, queries, record_keys, ConnInfo};
use crate::state::AppState;
use crate::store::OrgRecord;

/// Who may call an exchange endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A registered, active org presenting its (pinned) certificate.
    Org,
    /// The union only.
    Union,
}

/// The exchange's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `GET /v1/whoami`
    WhoAmI,
    /// `GET /v1/flows`
    Flows,
    /// `GET /v1/permit-keys`
    PermitKeys,
    /// `GET /v1/record-keys`
    RecordKeys,
    /// `GET /v1/record-chain`
    RecordChain,
    /// `POST /v1/queries`
    Query,
    /// `GET /v1/queries/{id}`
    QueryStatus,
    /// `POST /v1/persons`
    Persons,
    /// `POST /v1/copies`
    Copies,
    /// `GET /v1/persons/{code}/records`
    PersonRecords,
}

impl Endpoint {
    /// The `route` label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
            Endpoint::WhoAmI => "whoami",
            Endpoint::Flows => "flows",
            Endpoint::PermitKeys => "permit_keys",
            Endpoint::RecordKeys => "record_keys",
            Endpoint::RecordChain => "record_chain",
            Endpoint::Query => "query",
            Endpoint::QueryStatus => "query_status",
            Endpoint::Persons => "persons",
            Endpoint::Copies => "copies",
            Endpoint::PersonRecords => "person_records",
        }
    }
}

const fn row(
    method: Method,
    path: &'static str,
    caller: Caller,
    body: BodyLimit,
    endpoint: Endpoint,
) -> Route<Endpoint, Caller> {
    Route {
        method,
        path,
        caller,
        body,
        endpoint,
    }
}

use BodyLimit::{Configured, Empty};
use Caller::{Org, Union};

/// The exchange listener's endpoints: method, path, caller, body, endpoint.
pub const TABLE: &[Route<Endpoint, Caller>] = &[
    // Health and metrics for registered orgs only; load balancers and
    // Prometheus read them on the console listener, without a certificate.
    row(Method::GET, "/healthz", Org, Empty, Endpoint::Healthz),
    row(Method::GET, "/readyz", Org, Empty, Endpoint::Readyz),
    row(Method::GET, "/metrics", Org, Empty, Endpoint::Metrics),
    row(Method::GET, "/v1/whoami", Org, Empty, Endpoint::WhoAmI),
    row(Method::GET, "/v1/flows", Org, Empty, Endpoint::Flows),
    row(
        Method::GET,
        "/v1/permit-keys",
        Org,
        Empty,
        Endpoint::PermitKeys,
    ),
    row(
        Method::GET,
        "/v1/record-keys",
        Org,
        Empty,
        Endpoint::RecordKeys,
    ),
    row(
        Method::GET,
        "/v1/record-chain",
        Org,
        Empty,
        Endpoint::RecordChain,
    ),
    row(
        Method::POST,
        "/v1/queries",
        Org,
        Configured,
        Endpoint::Query,
    ),
    row(
        Method::GET,
        "/v1/queries/{id}",
        Org,
        Empty,
        Endpoint::QueryStatus,
    ),
    row(
        Method::POST,
        "/v1/persons",
        Org,
        Configured,
        Endpoint::Persons,
    ),
    row(
        Method::POST,
        "/v1/copies",
        Org,
        Configured,
        Endpoint::Copies,
    ),
    row(
        Method::GET,
        "/v1/persons/{code}/records",
        Union,
        Empty,
        Endpoint::PersonRecords,
    ),
];

/// One admitted request, as an endpoint sees it.
pub struct Call<'a> {
    /// Shared state.
    pub state: &'a Arc<AppState>,
    /// The connection.
    pub conn: &'a ConnInfo,
    /// The admitted org (every exchange endpoint admits one).
    pub org: Option<OrgRecord>,
    /// Path placeholders.
    pub params: Params,
    /// The body the endpoint may read.
    pub body: BodyCap,
    /// The request id.
    pub request_id: &'a str,
}

impl Call<'_> {
    /// The admitted org; endpoints for orgs only are reached with one.
    pub fn org(&self) -> Result<&OrgRecord, BrokerError> {
        self.org
            .as_ref()
            .ok_or_else(|| BrokerError::Internal("an org endpoint ran without an org".into()))
    }

    /// Reads the body within the endpoint's cap and the body timeout.
    pub async fn read_body(&self, req: Request<Incoming>) -> Result<bytes::Bytes, BrokerError> {
        edge::read_body(
            req.into_body(),
            self.body.declared,
            self.body.max,
            self.state.config.limits.body_read_timeout(),
        )
        .await
    }
}

/// Serves one request of the exchange listener.
pub async fn handle(
    state: Arc<AppState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let found = layers::route(TABLE, req.method(), req.uri().path());
    let name = found.as_ref().map_or("other", |(r, _)| r.endpoint.name());
    layers::observe(&state.metrics, name, async |request_id: &str| {
        let who = conn
            .identity
            .org_id
            .as_ref()
            .map_or("-", |o| o.as_str())
            .to_string();
        let unbounded = found.as_ref().is_ok_and(|(r, _)| {
            matches!(
                r.endpoint,
                Endpoint::QueryStatus | Endpoint::Persons | Endpoint::Copies
            )
        });
        match bounded(
            &state,
            unbounded,
            stack(&state, &conn, found, req, request_id),
        )
        .await
        {
            Ok(response) => response,
            Err(Stop::Refused(refused)) => refused.respond(&state.metrics, request_id, &who),
            Err(Stop::Failed(e)) => endpoint_error(&state, &e, request_id, &who),
        }
    })
    .await
}

/// A request answers `unavailable` once its work has taken the backend's
/// request bound ([`AppState::request_bound`]; on PostgreSQL twice
/// `[storage] statement_timeout_ms`). Dropping
/// the request is what a client going away does (a query runs on in its own
/// task and commits, or not, as a whole). Long-polls and bulk uploads are
/// left to their own bounds.
async fn bounded(
    state: &AppState,
    unbounded: bool,
    work: impl std::future::Future<Output = Result<Response<Body>, Stop>>,
) -> Result<Response<Body>, Stop> {
    let Some(limit) = state.request_bound.filter(|_| !unbounded) else {
        return work.await;
    };
    match tokio::time::timeout(limit, work).await {
        Ok(done) => done,
        Err(_) => Err(Stop::Failed(BrokerError::refused(
            ErrorCode::Unavailable,
            "the database did not answer in time; nothing was answered; try again",
        ))),
    }
}

async fn stack(
    state: &Arc<AppState>,
    conn: &ConnInfo,
    found: Result<(&'static Route<Endpoint, Caller>, Params), Refused>,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, Stop> {
    let (route, params) = found?;
    let org = match admit(state, conn, route.caller).await {
        Ok(org) => Some(org),
        Err(stop) => {
            // A refused certificate or org is not served again on this
            // connection; the union-only rule refuses one request only.
            if matches!(stop, Stop::Refused(_)) {
                conn.closer.close();
            }
            return Err(stop);
        }
    };
    layers::rate_limit(&state.limits, org.as_ref().map(|o| &o.id), conn.peer.ip())?;
    let body = layers::body_cap(
        req.headers(),
        route.body.max_bytes(state.config.limits.max_body_bytes),
    )?;
    if route.body != Empty {
        layers::content_type(
            &req,
            &[
                "application/json",
                "application/x-ndjson",
                "application/jsonl",
            ],
        )?;
    }
    let call = Call {
        state,
        conn,
        org,
        params,
        body,
        request_id,
    };
    Ok(run(route.endpoint, &call, req).await?)
}

/// The certificate still valid (R1: revocation and expiry during an open
/// connection), org admission, then the union-only rule.
async fn admit(state: &AppState, conn: &ConnInfo, caller: Caller) -> Result<OrgRecord, Stop> {
    if let Err(reason) = conn.certificate.recheck(&state.trust) {
        return Err(Stop::Refused(Refused::new(
            reason,
            ErrorCode::Unauthenticated,
            standing::refusal_message(reason),
        )));
    }
    let org = match state.directory.admit(&conn.identity).await {
        Ok(org) => org,
        Err(AdmitError::Refused(refusal)) => {
            let error = refusal.to_error();
            return Err(Stop::Refused(Refused::new(
                refusal.reason(),
                error.code(),
                error.public_message(),
            )));
        }
        Err(AdmitError::Store(e)) => return Err(Stop::Failed(e)),
    };
    if caller == Union && org.kind != OrgKind::Union {
        return Err(Stop::Failed(BrokerError::refused(
            ErrorCode::Forbidden,
            "only the union lists who received data about its insured persons",
        )));
    }
    Ok(org)
}

/// Runs an endpoint.
async fn run(
    endpoint: Endpoint,
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let state = call.state;
    match endpoint {
        Endpoint::Healthz => Ok(ops::healthz()),
        Endpoint::Readyz => Ok(ops::readyz(state, call.request_id).await),
        Endpoint::Metrics => Ok(ops::metrics(state)),
        Endpoint::WhoAmI => {
            let org = call.org()?;
            Ok(edge::json(
                StatusCode::OK,
                &WhoAmI {
                    org_id: org.id.clone(),
                    kind: org.kind,
                    name: org.name.clone(),
                    certificate_fingerprint: call.conn.identity.fingerprint.clone(),
                },
            ))
        }
        Endpoint::Flows => Ok(edge::json(
            StatusCode::OK,
            &flows::flow_view(state, call.org()?),
        )),
        Endpoint::PermitKeys => Ok(edge::json(StatusCode::OK, &flows::permit_keys(state))),
        Endpoint::RecordKeys => Ok(edge::json(StatusCode::OK, &record_keys::keys(state))),
        Endpoint::RecordChain => Ok(edge::json(
            StatusCode::OK,
            &record_keys::chain(state, req.uri().query()).await?,
        )),
        Endpoint::Query => queries::post(call, req).await,
        Endpoint::QueryStatus => queries::get(call, req.uri().query()).await,
        Endpoint::Persons => {
            let body = call.read_body(req).await?;
            let report = batches::persons(state, call.org()?, &body).await?;
            Ok(edge::json(StatusCode::OK, &report))
        }
        Endpoint::Copies => {
            let body = call.read_body(req).await?;
            let report = batches::copies(state, call.org()?, &body).await?;
            Ok(edge::json(StatusCode::OK, &report))
        }
        Endpoint::PersonRecords => {
            let entries =
                disclosure::for_person(state, &call.org()?.id, call.params.get("code")).await?;
            Ok(edge::json(StatusCode::OK, &entries))
        }
    }
}

/// An endpoint's error: a refusal is counted under its code; anything
/// else is an internal fault, logged with its detail and answered without.
pub fn endpoint_error(
    state: &AppState,
    e: &BrokerError,
    request_id: &str,
    who: &str,
) -> Response<Body> {
    match e {
        BrokerError::Refused { .. } => {
            let reason = e.code().as_str();
            state.metrics.refusal(reason);
            tracing::info!(reason, who, request_id, "refused request");
        }
        _ => {
            state
                .metrics
                .refusal(crate::edge::refusal::Reason::InternalError.as_str());
            tracing::error!(error = %e, who, request_id, "internal error");
        }
    }
    edge::error(e, request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_exactly_one_row_and_a_distinct_name() {
        crate::edge::route::assert_well_formed(TABLE, Endpoint::name);
    }

    /// The published contract lists every `/v1` endpoint the broker serves.
    #[test]
    fn the_schema_lists_exactly_the_exchange_table() {
        crate::edge::route::assert_published(
            TABLE,
            "/v1/",
            &kakehashi_interfaces::schema::ENDPOINTS,
        );
    }

    #[test]
    fn every_exchange_endpoint_admits_an_org_first() {
        // No endpoint of the exchange answers a certificate whose org is not
        // registered and active, health and metrics included (R1).
        for route in TABLE {
            assert!(matches!(route.caller, Org | Union), "{}", route.path);
        }
    }
}
