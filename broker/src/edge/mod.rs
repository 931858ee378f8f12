//! The edge every listener shares, as small layers with one job each:
//!
//! - [`listener`]: accept under a connection limit, TLS with a timeout and
//!   reload, HTTP/1.1 and HTTP/2 with a header timeout, graceful shutdown;
//! - [`route`]: the endpoint-table row type and path matching (404 / 405);
//! - [`limits`]: per-org and per-address rate limits (R21);
//! - [`layers`]: the request steps a listener assembles in its own `stack`
//!   function — request id and metrics, route, body cap, rate limit;
//! - [`http`]: JSON responses, the one error body, bounded body reading;
//! - [`refusal`]: why the edge refused, one enum for logs and metrics.
//!
//! A listener adds its own caller check (org admission for the exchange, a
//! session and role for the console) between these layers.

pub mod http;
pub mod layers;
pub mod limits;
pub mod listener;
pub mod refusal;
pub mod route;
