//! gRPC services of the node and the mapping of errors to statuses.

pub mod assessment;
pub mod auth;
pub mod monitor;
pub mod registry;
pub mod staff;
pub mod status;
