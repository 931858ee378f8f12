//! Kakehashi broker: the intermediate server of the data exchange.
//!
//! Layering (see ../shared/DESIGN.md): `server` accepts connections and does
//! TLS; `admission` decides who may use the exchange; `routes` maps requests
//! to handlers; decisions live in their own modules; `store` hides the backend.
#![forbid(unsafe_code)]

pub mod admission;
pub mod batches;
pub mod config;
pub mod copies;
pub mod dev;
pub mod error;
pub mod exchange;
pub mod exchange_routes;
pub mod http;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod lookups;
pub mod metrics;
pub mod policy;
pub mod records;
pub mod results;
pub mod retention;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;

pub use config::Config;
pub use error::BrokerError;
pub use server::RunningBroker;
