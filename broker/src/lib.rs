//! Kakehashi broker: the intermediate server (中間サーバー) of the data
//! exchange.
//!
//! # One query, drawn once
//!
//! ```text
//!  org system ──mTLS──▶ edge::listener ──▶ exchange::endpoints (the table)
//!                       (accept, TLS,        │  admission · rate limit · body cap
//!                        timeouts)           ▼
//!                                     exchange::queries ─▶ exchange::pipeline
//!                                            policy (flow list) ─▶ lookups / identity
//!                                            (per-org codes, copies) ─▶ permit (signed)
//!                                            ─▶ seal (HPKE to the reply key)
//!                                            ─▶ records (group commit) ─▶ reply
//!
//!  person ──TLS──▶ edge::listener ──▶ console::endpoints (the table)
//!                                        session · role · CSRF · rate limit · body cap
//!                                        ─▶ people (accounts) · approvals · oplog
//! ```
//!
//! # Where things live
//!
//! - [`edge`]: what every listener shares — accept loop, TLS handshake,
//!   timeouts, the endpoint-table type and path matching, rate limits, body
//!   caps, the one JSON error shape, and the refusal reasons.
//! - [`exchange`]: the mutual-TLS listener for org systems — its endpoint
//!   table (`exchange/endpoints.rs`), one file per endpoint group, org
//!   admission, and the query pipeline.
//! - [`console`]: the listener for people — its endpoint table
//!   (`console/endpoints.rs`), sessions, the role table, approvals.
//! - [`people`]: staff accounts, passwords, TOTP, sessions (R19, R20).
//! - [`oplog`]: the operation log of human actions (R17).
//! - [`policy`], [`identity`], [`lookups`], [`copies`], [`results`]: the
//!   decisions and reads of one query.
//! - [`records`]: the provision records (R14–R18): group commit, chain,
//!   checkpoints, export, purge. The record format is specified in
//!   `kakehashi_interfaces::audit`.
//! - [`store`]: the storage boundary — every difference between SQLite and
//!   PostgreSQL behind its traits (`Store`, `Backend`, `Committer`),
//!   implemented in `store/sqlite/` and `store/postgres/`; migrations.
//! - [`keys`], [`metrics`], [`retention`], [`config`], [`error`].
//! - [`cluster`]: several nodes on one PostgreSQL — roles for background
//!   work done once, changes announced to every node.
//! - [`server`]: [`RunningBroker`] assembles the listeners and background
//!   tasks.
#![forbid(unsafe_code)]

pub mod approvals;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod copies;
pub mod dev;
pub mod edge;
pub mod error;
pub mod exchange;
pub mod flow_changes;
pub mod idempotency;
pub mod identity;
pub mod keys;
#[cfg(test)]
mod layers;
pub mod lookups;
pub mod metrics;
pub mod oplog;
pub mod people;
pub mod policy;
pub mod records;
pub mod results;
pub mod retention;
pub mod server;
pub mod state;
pub mod store;

pub use config::Config;
pub use error::BrokerError;
pub use server::RunningBroker;
