//! The transport edge: tonic services, prost <-> domain conversion, status
//! mapping and stream bounds. Wire types do not travel past this module.

mod convert;
pub mod layers;
mod service;
mod status;
mod streams;

pub use service::UserGrpc;
pub use status::code_name;
