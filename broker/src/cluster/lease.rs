//! Roles held with session locks of the shared database (PostgreSQL's
//! advisory locks, [`crate::store::backend::LockSession`]).
//!
//! Each node keeps one lock session of its own and, every
//! [`ATTEMPT_EVERY_MS`], checks that the connection is alive and tries to
//! take each role it does not hold (`pg_try_advisory_lock`, never waiting).
//! A session lock lives exactly as long as the session: when the holder
//! crashes, PostgreSQL ends its session and frees the lock; when the
//! holder's check fails or takes longer than [`CHECK_TIMEOUT`], the holder
//! gives its roles up at once, before PostgreSQL could free them for
//! anyone else (its keepalive takes longer), so two nodes never both
//! believe they hold a role.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::BrokerError;
use crate::metrics::RoleMetrics;
use crate::store::backend::{LockSession, SharedDatabase};

/// How often a node checks its lock connection and tries to take the roles
/// it does not hold (milliseconds).
pub const ATTEMPT_EVERY_MS: u64 = 1_000;

/// The longest the liveness check of the lock connection may take before
/// the node gives its roles up.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// First key of every role's advisory lock ("kk"), so they stay apart from
/// other users of advisory locks in the same database.
const LOCK_CLASS: i32 = 0x6b6b;

/// Background work that exactly one node does at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signs the provision records' checkpoints.
    Sealer,
    /// Expires pending queries (one `expired` record each) and deletes
    /// expired results.
    Sweeper,
    /// The daily purge of provision records past their retention and the
    /// erasure of personal data past theirs.
    Retention,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Sealer, Role::Sweeper, Role::Retention];

    /// The role's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sealer => "sealer",
            Role::Sweeper => "sweeper",
            Role::Retention => "retention",
        }
    }

    fn index(self) -> usize {
        match self {
            Role::Sealer => 0,
            Role::Sweeper => 1,
            Role::Retention => 2,
        }
    }
}

/// The roles this node holds now.
#[derive(Debug)]
pub struct Roles {
    node: String,
    held: [AtomicBool; 3],
    nodes: AtomicU32,
    metric: OnceLock<RoleMetrics>,
}

impl Roles {
    /// A node alone with its database (SQLite): every role, always.
    pub fn single_node() -> Roles {
        Roles {
            node: "single".into(),
            held: [
                AtomicBool::new(true),
                AtomicBool::new(true),
                AtomicBool::new(true),
            ],
            nodes: AtomicU32::new(1),
            metric: OnceLock::new(),
        }
    }

    /// A node of a cluster, holding nothing until [`hold`] takes roles.
    pub fn contested(node: String) -> Roles {
        Roles {
            node,
            held: [
                AtomicBool::new(false),
                AtomicBool::new(false),
                AtomicBool::new(false),
            ],
            nodes: AtomicU32::new(1),
            metric: OnceLock::new(),
        }
    }

    /// The nodes alive on the database, this one included (at least 1),
    /// as of the last round of [`hold`].
    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Acquire).max(1)
    }

    /// Whether this node holds `role` now.
    pub fn holds(&self, role: Role) -> bool {
        self.held[role.index()].load(Ordering::Acquire)
    }

    /// The roles held now, by name (for logs and `/metrics`).
    pub fn held(&self) -> Vec<&'static str> {
        Role::ALL
            .iter()
            .filter(|r| self.holds(**r))
            .map(|r| r.as_str())
            .collect()
    }

    /// Shows the roles held on `/metrics` from now on
    /// (`kakehashi_cluster_role`); the first call counts.
    pub fn report_to(&self, metric: RoleMetrics) {
        for role in Role::ALL {
            metric.set(role.as_str(), self.holds(role));
        }
        let _ = self.metric.set(metric);
        // A role taken between the loop and `set` is shown now.
        if let Some(metric) = self.metric.get() {
            for role in Role::ALL {
                metric.set(role.as_str(), self.holds(role));
            }
        }
    }

    fn set(&self, role: Role, held: bool) {
        let was = self.held[role.index()].swap(held, Ordering::AcqRel);
        if let Some(metric) = self.metric.get() {
            metric.set(role.as_str(), held);
        }
        if was != held {
            if held {
                tracing::info!(node = %self.node, role = role.as_str(), "this node took the role");
            } else {
                tracing::warn!(node = %self.node, role = role.as_str(), "this node gave the role up");
            }
        }
    }

    fn release_all(&self) {
        for role in Role::ALL {
            self.set(role, false);
        }
    }
}

/// Holds what roles it can on a connection of its own until `stop`
/// changes; then gives them up and closes the connection, which frees the
/// locks at once for the other nodes.
pub(crate) async fn hold(
    shared: Arc<dyn SharedDatabase>,
    roles: Arc<Roles>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(ATTEMPT_EVERY_MS);
    let mut conn: Option<Box<dyn LockSession>> = None;
    let mut failing = false;
    loop {
        if conn.is_none() {
            match tokio::time::timeout(every, shared.lock_session()).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    failing = false;
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "the role lock connection could not be opened; retrying");
                    }
                    failing = true;
                }
                Err(_) => failing = true,
            }
        }
        if let Some(c) = conn.as_mut() {
            match tokio::time::timeout(CHECK_TIMEOUT, attempt(c.as_mut(), &roles)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the role lock connection failed; giving the roles up");
                    roles.release_all();
                    conn = None;
                }
                Err(_) => {
                    tracing::warn!(
                        "the role lock connection did not answer in time; giving the roles up"
                    );
                    roles.release_all();
                    conn = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
    roles.release_all();
    if let Some(c) = conn {
        // Ending the session frees every lock it holds.
        c.close().await;
    }
}

/// One round: the connection answers, then each free role is tried.
async fn attempt(conn: &mut dyn LockSession, roles: &Roles) -> Result<(), BrokerError> {
    // This count is the session's liveness check.
    let nodes = conn.nodes().await?;
    roles.nodes.store(nodes, Ordering::Release);
    for role in Role::ALL {
        if roles.holds(role) {
            continue;
        }
        if conn.try_lock(LOCK_CLASS, role.index() as i32).await? {
            roles.set(role, true);
        }
    }
    Ok(())
}
