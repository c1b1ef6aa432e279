//! The ldx wire protocol: generated message types and gRPC services of `ldx.v1`, and the
//! identities, signatures and hash chains that make its messages trustworthy.

pub mod chain;
pub mod directory;
pub mod identity;
pub mod report;

/// Generated code of the `ldx.v1` protobuf package.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("ldx.v1");
}

/// Encoded `FileDescriptorSet` of every ldx proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ldx_descriptor.bin"));

/// Fully qualified gRPC service names, as reflection and health checking list them.
pub mod service_names {
    pub const REGISTRY: &str = "ldx.v1.Registry";
    pub const EXCHANGE: &str = "ldx.v1.Exchange";
    pub const MONITOR: &str = "ldx.v1.Monitor";
    pub const ASSESSMENT: &str = "ldx.v1.Assessment";
    pub const DIRECTORY: &str = "ldx.v1.Directory";
    pub const STAFF: &str = "ldx.v1.Staff";
}
