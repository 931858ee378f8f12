//! Several broker nodes on one PostgreSQL database.
//!
//! Nodes share nothing but the database (and the same configuration and
//! key directory), so a client may reach any of them. What one process
//! could do alone needs two things across processes:
//!
//! - **Roles** ([`lease`]): background work that must happen exactly once
//!   (the pending-query sweeper, the retention purge and erasure, signing
//!   checkpoints) runs only on the node holding that role's PostgreSQL
//!   advisory lock, taken on a connection of its own. When the holder dies
//!   its session ends, the lock is free, and another node takes the role at
//!   its next attempt ([`TAKEOVER`]).
//! - **Changes** ([`changes`]): what one node changes and the others keep in
//!   memory (the flow list in force, decided pending queries that wake
//!   long-polls) is announced with `NOTIFY` and acted on by every node's
//!   `LISTEN` ([`crate::server::changes`]); after a lost connection each
//!   node re-reads what it keeps.
//!
//! This module holds what any module may use (the roles a node holds, an
//! announcement); a running node's part is assembled in
//! [`crate::server::node`].
//!
//! On SQLite there is one node: it holds every role and nothing is
//! announced.
//!
//! The provision-record chain needs nothing of this module: every commit
//! moves the head row only from the head it read (`records::writer`), so
//! writers on several nodes never fork it.

pub mod changes;
pub mod lease;

use std::time::Duration;

pub use lease::{Role, Roles};

/// The longest a role stays unheld after its holder's database session
/// ends (a crash, `kill -9`, a closed connection): the next attempt of
/// another node takes it. A holder whose host vanishes without closing its
/// connection is noticed by PostgreSQL's TCP keepalive first
/// (`tcp_keepalives_idle`, `docs/cluster.md`).
pub const TAKEOVER: Duration = Duration::from_millis(2 * lease::ATTEMPT_EVERY_MS);
