//! gRPC services of the node and the mapping of errors to statuses.

pub mod assessment;
pub mod monitor;
pub mod registry;
pub mod status;
