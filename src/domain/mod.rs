//! The business core: users, their validation and the operations on them.
//!
//! Nothing here knows about gRPC, protobuf or SQL. The transport edge
//! (`crate::grpc`) converts wire messages into these types; the storage
//! port (`ports.rs`: `UserStore`, `StoreError`) is defined here and
//! implemented by `crate::store`. Nothing here imports an adapter module.

mod actor;
mod bulk;
mod error;
mod password;
mod ports;
mod service;
mod update;
mod user;
mod watch;

pub use actor::{Actor, ADMIN_ROLE};
pub use bulk::{BulkOutcome, CreateUser};
pub use error::{DomainError, FieldViolation, ValidationError};
pub use password::{Password, PasswordHasher};
pub use ports::{check_revision, PoolStats, StoreError, StoreHealth, UserStore};
pub use service::{list_position, UserService, UserServiceLimits};
pub use update::{RequestedStatus, UpdateUser};
pub use user::{
    now, Email, EventKind, NewUser, User, UserEvent, UserId, UserName, UserPatch, UserStatus,
    DEFAULT_ROLE,
};
pub use watch::watch_ids;

/// Helpers shared by the unit tests of the files above.
#[cfg(test)]
mod test_support {
    use super::ValidationError;

    /// The fields a validation error names, in order.
    pub(super) fn fields(err: ValidationError) -> Vec<String> {
        err.violations.into_iter().map(|v| v.field).collect()
    }
}
