//! The exchange listener: org systems over mutual TLS (R1).
//!
//! - [`endpoints`]: the table of every endpoint and the stack a request
//!   goes through; one file per endpoint or small group beside it
//!   ([`ops`], [`flows`], [`queries`], [`batches`], [`disclosure`],
//!   [`record_keys`]);
//! - org admission and certificate standing are edge layers
//!   ([`crate::edge::admission`], [`crate::edge::standing`]);
//! - [`pipeline`]: one query, end to end (policy → lookups → permit → seal
//!   → record);
//! - [`sweep`]: the sweep of expired queries (the sweeper role's work).

pub mod batches;
pub mod disclosure;
pub mod endpoints;
pub mod flows;
pub mod ops;
pub mod pipeline;
pub mod queries;
pub mod record_keys;
pub mod sweep;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::edge::http::Body;
use crate::edge::listener::{Closer, Service};
use crate::edge::refusal::Reason;
use crate::edge::standing;
use crate::edge::tls::{self, PeerIdentity};
use crate::state::AppState;

pub use pipeline::{query, stored_to_response};
pub use sweep::sweep_once;

/// What the broker knows about an exchange connection once TLS is done.
#[derive(Debug)]
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// Identity from the verified client certificate.
    pub identity: PeerIdentity,
    /// The certificate, checked again at every request.
    pub certificate: standing::PeerCertificate,
    /// Closes the connection once a request on it is refused.
    pub closer: Closer,
}

/// The exchange as a [`Service`] of the shared listener.
pub struct Exchange {
    /// Shared state.
    pub state: Arc<AppState>,
}

impl Service for Exchange {
    type Conn = ConnInfo;

    fn connection(
        &self,
        peer: SocketAddr,
        tls: &rustls::ServerConnection,
        closer: Closer,
    ) -> Result<ConnInfo, Reason> {
        // Unreachable with a mandatory client verifier; refuse rather than assume.
        let chain = tls.peer_certificates().ok_or(Reason::NoClientCertificate)?;
        let identity = chain
            .first()
            .map(tls::peer_identity)
            .ok_or(Reason::NoClientCertificate)?;
        // Generation 0 is never in force: the first request verifies the
        // chain again under the trust the exchange holds, which may be newer
        // than the one the listener's handshake used.
        let certificate = standing::PeerCertificate::new(chain, 0);
        Ok(ConnInfo {
            peer,
            identity,
            certificate,
            closer,
        })
    }

    fn call(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send {
        endpoints::handle(self.state.clone(), conn, req)
    }
}
