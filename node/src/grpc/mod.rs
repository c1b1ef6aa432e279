//! gRPC services of the node and the mapping of errors to statuses.

pub mod monitor;
pub mod registry;
pub mod status;
