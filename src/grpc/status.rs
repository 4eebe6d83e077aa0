//! Domain errors -> gRPC status, in one place.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{DomainError, ValidationError};

/// Maps an error to the status a client sees. Internal details are logged
/// here and replaced by a generic message: SQL, paths and driver errors
/// never reach clients.
pub fn to_status(err: DomainError) -> Status {
    match err {
        DomainError::Invalid(v) => invalid_argument(&v, None),
        DomainError::NotFound(id) => Status::not_found(format!("user {id} not found")),
        DomainError::AlreadyExists => {
            Status::already_exists("a user with this email already exists")
        }
        DomainError::PermissionDenied(message) => Status::permission_denied(message),
        DomainError::Unavailable(detail) => {
            tracing::warn!(error = %detail, "store unavailable");
            Status::unavailable("the user store is unavailable; retry with backoff")
        }
        DomainError::Overloaded(message) => Status::resource_exhausted(message),
        DomainError::OutOfRange(message) => Status::out_of_range(message),
        DomainError::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            Status::internal("internal error")
        }
    }
}

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` listing every bad field.
/// `prefix` is prepended to the message (e.g. which stream item failed).
pub fn invalid_argument(err: &ValidationError, prefix: Option<&str>) -> Status {
    let mut details = ErrorDetails::new();
    for v in &err.violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let message = match prefix {
        Some(prefix) => format!("{prefix}: {err}"),
        None => err.to_string(),
    };
    Status::with_error_details(Code::InvalidArgument, message, details)
}
