//! The business core: users, their validation and the operations on them.
//!
//! Nothing here knows about gRPC, protobuf or SQL. The transport edge
//! (`crate::grpc`) converts wire messages into these types; the storage
//! port (`ports.rs`: `UserStore`, `StoreError`) is defined here and
//! implemented by `crate::store`. Nothing here imports an adapter module.

mod actor;
mod error;
mod password;
mod ports;
mod service;
mod user;

pub use actor::{Actor, ADMIN_ROLE};
pub use error::{DomainError, FieldViolation, ValidationError};
pub use password::{Password, PasswordHasher};
pub use ports::{check_revision, PoolStats, StoreError, StoreHealth, UserStore};
pub use service::{
    list_position, watch_ids, BulkOutcome, CreateUser, RequestedStatus, UpdateUser, UserService,
    UserServiceLimits,
};
pub use user::{
    now, Email, EventKind, NewUser, User, UserEvent, UserId, UserName, UserPatch, UserStatus,
    DEFAULT_ROLE,
};
