//! The transport edge: tonic services, prost <-> domain conversion, status
//! mapping, stream bounds and the per-call layers. Wire types do not travel
//! past this module.

pub mod codes;
mod convert;
pub mod middleware;
mod service;
mod status;
mod streams;

pub use codes::code_name;
pub use service::{UserGrpc, WATCH_REVISION_HEADER};
