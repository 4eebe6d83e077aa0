//! The business core: users, their validation and the operations on them.
//!
//! Nothing here knows about gRPC, protobuf or SQL. The transport edge
//! (`crate::grpc`) converts wire messages into these types, and the stores
//! (`crate::store`) persist them.

mod actor;
mod error;
mod password;
mod service;
mod user;

pub use actor::{Actor, ADMIN_ROLE};
pub use error::{DomainError, FieldViolation, ValidationError};
pub use password::{Password, PasswordHasher};
pub use service::{
    BulkOutcome, CreateUser, RequestedStatus, UpdateUser, UserService, UserServiceLimits,
};
pub use user::{
    now, Email, EventKind, NewUser, User, UserEvent, UserId, UserName, UserPatch, UserStatus,
    DEFAULT_ROLE,
};
