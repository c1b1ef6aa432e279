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
pub mod join;
pub mod ledger;
pub mod listen;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod staff;
pub mod storage;

/// The storage engine, for the gateway's own history store (same build, same features).
pub use rocksdb;

/// An error and its causes on one line, each cause once (some errors repeat their source
/// in their own message): so a refused TLS handshake says why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
