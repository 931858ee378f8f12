//! The host commands of `kakehashi-broker` (besides `serve` and `dev`):
//! each file parses one command's arguments with clap and runs it against
//! the database and key directory of a `broker.toml`. Changes made here
//! are logged in the operation log as `host:<login name>` (R17,
//! [`crate::oplog::HostLog`]).

pub mod flows;
pub mod keys;
pub mod oplog;
pub mod people;
pub mod records;
