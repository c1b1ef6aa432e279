//! ldx gateway: the district's view of its federation. It holds the federation PKI,
//! serves the signed directory, collects every node's replication status for `/metrics`
//! and the operators' dashboard, and runs the demo federation.

pub mod assess;
pub mod cli;
pub mod collector;
pub mod dashboard;
pub mod demo;
pub mod directory;
pub mod directory_tls;
pub mod history;
pub mod nodes;
pub mod pki;
pub mod sd;
pub mod server;
pub mod synthetic;
