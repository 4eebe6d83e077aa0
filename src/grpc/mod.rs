//! The transport edge: tonic services, prost <-> domain conversion, status
//! mapping, stream bounds and the per-call layers. Wire types do not travel
//! past this module.

pub mod codes;
// Public for the fuzz targets (fuzz/), which run the same conversion.
pub mod convert;
pub mod max_age;
pub mod middleware;
mod service;
mod status;
mod streams;

pub use codes::code_name;
pub use service::UserGrpc;
