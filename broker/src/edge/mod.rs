//! The edge every listener shares, as small layers with one job each:
//!
//! - [`listener`]: accept under a connection limit, TLS with a timeout and
//!   reload, HTTP/1.1 and HTTP/2 with a header timeout, graceful shutdown;
//! - [`route`]: the endpoint-table row type and path matching (404 / 405);
//! - [`limits`]: per-org and per-address rate limits (R21);
//! - [`layers`]: the request steps a listener assembles in its own `stack`
//!   function — request id and metrics, route, body cap, rate limit;
//! - [`http`]: JSON responses, the one error body, bounded body reading;
//! - [`refusal`]: why the edge refused, one enum for logs and metrics;
//! - [`admission`]: which certificate's org may use a mutual-TLS listener
//!   (the org directory, cached);
//! - [`standing`]: a client certificate revoked or expired while its
//!   connection is open stops being served;
//! - [`tls`]: both listeners' TLS configurations, handshake failures as
//!   refusal reasons, and the org identity a client certificate proves.
//!
//! A listener adds its own caller check (org admission for the exchange, a
//! session and role for the console) between these layers.

pub mod admission;
pub mod http;
pub mod layers;
pub mod limits;
pub mod listener;
pub mod refusal;
pub mod route;
pub mod standing;
pub mod tls;
