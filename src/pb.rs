//! Generated wire types (prost) and gRPC stubs (tonic) for `user.v1`.
//!
//! These types stop at the transport edge (`crate::grpc`) and the client
//! (`crate::client`); the domain and the stores never see them.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("user.v1");

/// The encoded `FileDescriptorSet` of our protos (with their imports),
/// served by the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/user_descriptor.bin"));

/// The fully qualified service name, as used by health checks and metrics.
pub const SERVICE_NAME: &str = "user.v1.UserService";
