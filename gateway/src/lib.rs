//! ldx gateway: the district's view of its federation. For now it runs the demo
//! federation; the directory, PKI, monitoring and dashboard build on it.

pub mod cli;
pub mod demo;
pub mod synthetic;
