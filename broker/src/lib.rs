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
//! The modules form layers, listed top to bottom in `layers.rs`: each uses
//! only the layers below its own (a unit test checks it), so there is no
//! import cycle and the crate reads from the bottom up.
//!
//! - [`server`]: [`RunningBroker`] assembles the listeners and background
//!   tasks, and this node's part in a cluster; [`cli`]: the host commands;
//!   [`dev`]: the dev environment.
//! - [`console`]: the listener for people — its endpoint table
//!   (`console/endpoints.rs`), sessions, the role table, pages;
//!   [`approvals`]: sensitive answers waiting for an operator.
//! - [`exchange`]: the mutual-TLS listener for org systems — its endpoint
//!   table (`exchange/endpoints.rs`), one file per endpoint group, and the
//!   query pipeline.
//! - [`copies`], [`identity`], [`idempotency`], [`lookups`], [`results`],
//!   [`policy`]: the decisions and reads of one query.
//! - [`state`]: what a running broker's endpoints share.
//! - [`people`]: staff accounts, passwords, TOTP, sessions (R19, R20);
//!   [`flow_changes`]: two-person flow-list changes (R8); [`retention`]:
//!   erasure of personal data (R15).
//! - [`records`]: the provision records (R14–R18), backend-free: group
//!   commit, chain, checkpoints, export, purge. The record format is
//!   specified in `kakehashi_interfaces::audit`.
//! - [`oplog`]: the operation log of human actions (R17); [`keys`]: the key
//!   directory.
//! - [`cluster`]: what several nodes on one PostgreSQL share — the roles a
//!   node holds for background work done once, announcements of changes.
//! - [`edge`]: what every listener shares — accept loop, TLS, org admission,
//!   timeouts, the endpoint-table type and path matching, rate limits, body
//!   caps, the one JSON error shape, and the refusal reasons.
//! - [`store`]: the storage boundary — every difference between SQLite and
//!   PostgreSQL behind its traits (`Store`, `Backend`, `Committer`),
//!   implemented in `store/sqlite/` and `store/postgres/`; the tables'
//!   rows; migrations.
//! - [`config`], [`metrics`], [`error`].
#![forbid(unsafe_code)]
// The crate's documentation is read with `--document-private-items`
// (README, Layout): its module docs link the private items they describe.
#![allow(rustdoc::private_intra_doc_links)]

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
