//! user-service: the `user.v1.UserService` gRPC server as a library, so
//! that integration tests and benchmarks start the real thing in-process.
//!
//! See ARCHITECTURE.md for the module map and the invariants.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod hash;
pub mod health;
/// The generated `user.v1` wire types and stubs (the `user-service-api`
/// crate): used by `grpc/` only, the edge where they stop.
pub use user_service_api::v1 as pb;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
