//! Client library of Kakehashi, the mutual-TLS data-exchange broker.
//!
//! A [`Client`] talks to a broker's exchange listener as one org, identified
//! by the client certificate of a [`Profile`]. Every call is typed with the
//! wire types of [`kakehashi_interfaces`]; every refusal comes back as
//! [`ClientError::Refused`] with the broker's stable [`ErrorCode`].
//!
//! ```no_run
//! # async fn run() -> Result<(), kakehashi_client::ClientError> {
//! use kakehashi_client::{Client, ClientConfig};
//!
//! // The profiles the `kakehashi` CLI manages.
//! let config = ClientConfig::load(&ClientConfig::default_path()?)?;
//! let (_name, profile) = config.profile(None)?;
//! let client = Client::connect(profile).await?;
//! println!("{}", client.whoami().await?.org_id);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod calls;
mod client;
pub mod config;
mod error;
pub mod pending;
mod tls;
mod transport;
pub mod witness;

pub use calls::{Answer, PendingQuery, Query, QueryKeys, QueryOutcome, MAX_WAIT_PER_REQUEST};
pub use client::Client;
pub use config::{ClientConfig, Profile};
pub use error::ClientError;
/// The wire contract, re-exported so callers need not depend on it separately.
pub use kakehashi_interfaces as interfaces;
pub use kakehashi_interfaces::ErrorCode;
pub use pending::{KeptQuery, PendingEntry, PendingStore};
pub use transport::ClientOptions;
pub use witness::{CheckpointBook, WitnessReport};
