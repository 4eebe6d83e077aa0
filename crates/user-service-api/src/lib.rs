//! The `user.v1` contract as Rust types: the prost messages and the tonic
//! stubs generated from `proto/user/v1/user_service.proto`.
//!
//! This crate holds no behaviour of the service. The server keeps these
//! types at its gRPC edge (its domain and stores never see them); the
//! client library hands them to its callers. Two helpers both sides need
//! sit beside the contract, here because the client must not depend on
//! the server: [`backoff`], the retry delay policy, and [`codec`], the
//! stubs' codec (prost with smaller per-call buffers).

pub mod backoff;
pub mod codec;

/// Package `user.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]

    tonic::include_proto!("user.v1");

    /// The encoded `FileDescriptorSet` of the contract (with its imports,
    /// and the proto comments as source info): served by reflection, and
    /// the source of the API reference.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/user_descriptor.bin"));

    /// The WatchUsers response header naming the revision the stream starts
    /// after (see the proto): where a client that has received no event yet
    /// resumes from.
    pub const WATCH_REVISION_HEADER: &str = "watch-revision";

    /// The fully qualified service name, as used by health checks and metrics.
    pub const SERVICE_NAME: &str = "user.v1.UserService";
}
