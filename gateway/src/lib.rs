//! ldx gateway: the district's view of its federation. It holds the federation PKI,
//! serves the signed directory, and runs the demo federation; monitoring and the
//! dashboard build on it.

pub mod cli;
pub mod collector;
pub mod demo;
pub mod directory;
pub mod pki;
pub mod server;
pub mod synthetic;
