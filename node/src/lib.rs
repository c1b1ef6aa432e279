//! ldx node: the records of one street office, township or county, the staff API over
//! them, and (with the sync work) its channels to other nodes.

pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod directory;
pub mod domain;
pub mod exchange;
pub mod grpc;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod storage;

/// The storage engine, for the gateway's own history store (same build, same features).
pub use rocksdb;
