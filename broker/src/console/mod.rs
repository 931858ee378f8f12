//! The console listener: people — operators, auditors, administrators —
//! over server-authenticated TLS, logging in with a password and TOTP.
//!
//! - [`endpoints`]: the table of every people endpoint (method, path, role,
//!   body limit) and the stack a request goes through;
//! - [`access`]: what each kind of access admits (R20);
//! - [`session`]: login, TOTP, password change, logout;
//! - [`approvals`]: the approval queue of sensitive answers (R11);
//! - [`audit`]: published keys, the operation log, users;
//! - [`records`]: auditors' search and export of provision records (R16);
//! - [`flows`]: flow-list versions proposed and approved by two administrators (R8);
//! - [`admin`]: administrators' changes to users and orgs;
//! - [`pages`]: the HTML pages people use in a browser (ja/en);
//! - [`masking`]: Individual Numbers hidden from people without the
//!   privilege, on the pages and in the JSON APIs alike (R5).
//!
//! Org certificates play no part here, and a session opens nothing on the
//! exchange listener: the two never mix.

pub mod access;
pub mod admin;
pub mod approvals;
pub mod audit;
pub mod endpoints;
pub mod flows;
pub mod masking;
pub mod pages;
pub mod records;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::edge::http::Body;
use crate::edge::limits::RateLimits;
use crate::edge::listener::Service;
use crate::edge::refusal::Reason;
use crate::error::BrokerError;
use crate::oplog::{OpEntry, OperationLog};
use crate::people::People;
use crate::state::AppState;

/// What the console knows about a connection: only its address (people
/// identify themselves per request, with a session).
#[derive(Debug, Clone)]
pub struct ConsoleConn {
    /// Client address.
    pub peer: SocketAddr,
}

/// The console as a [`Service`] of the shared listener.
pub struct Console {
    /// Shared state.
    pub state: Arc<AppState>,
    /// Per-address limits of the console (its own allowance, apart from the
    /// exchange's).
    pub limits: Arc<RateLimits>,
    /// Accounts and sessions.
    pub people: People,
    /// The operation log (R17).
    pub oplog: Arc<OperationLog>,
    /// Exports waiting to be downloaded.
    pub downloads: records::Downloads,
}

impl Console {
    /// The console over a broker's state.
    pub async fn start(state: Arc<AppState>) -> Result<Console, BrokerError> {
        let config = &state.config.console;
        let limits = Arc::new(RateLimits::per_address(
            config.per_address_per_second,
            config.per_address_burst,
        ));
        limits.spawn_pruner(std::time::Duration::from_secs(60));
        let people = People::new(state.store.pools(), state.config.people.clone())?;
        let oplog = OperationLog::open(state.store.pools(), &state.config.keys.dir).await?;
        Ok(Console {
            state,
            limits,
            people,
            oplog,
            downloads: records::Downloads::default(),
        })
    }

    /// Appends to the operation log: an action whose entry cannot be
    /// written is reported as failed (R17: no human action goes unlogged).
    pub async fn log(&self, entry: OpEntry) -> Result<u64, BrokerError> {
        self.oplog.append(entry).await.inspect_err(|e| {
            tracing::error!(error = %e, "operation log append failed");
        })
    }
}

impl Service for Console {
    type Conn = ConsoleConn;

    fn connection(
        &self,
        peer: SocketAddr,
        _tls: &rustls::ServerConnection,
        _closer: crate::edge::listener::Closer,
    ) -> Result<ConsoleConn, Reason> {
        Ok(ConsoleConn { peer })
    }

    fn call(
        self: Arc<Self>,
        conn: Arc<ConsoleConn>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send {
        endpoints::handle(self, conn, req)
    }
}
