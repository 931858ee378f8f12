//! Kakehashi's performance tooling: the `kakehashi-bench` load generator
//! (scenarios, open and closed loop, idle connections, side-by-side compare
//! with nginx) and the crypto-floor fixture the criterion benches share.
#![forbid(unsafe_code)]
// The crate's documentation is read with `--document-private-items`
// (README, Layout): its module docs link the private items they describe.
#![allow(rustdoc::private_intra_doc_links)]

pub mod background;
pub mod client;
pub mod cluster;
pub mod compare;
pub mod floor;
pub mod idle;
pub mod load;
pub mod report;
pub mod rss;
pub mod setup;
pub mod workdir;
