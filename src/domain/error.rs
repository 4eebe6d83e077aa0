use std::fmt;

use super::StoreError;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name as the client knows it (e.g. `email`, `update_mask`).
    pub field: String,
    /// What is wrong and what is expected, in words a client can show.
    pub description: String,
}

/// Every invalid field of a request: validation reports all of them at once
/// so a client can fix its request in one round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationError {
    pub violations: Vec<FieldViolation>,
}

impl ValidationError {
    pub fn single(field: &str, description: impl Into<String>) -> Self {
        let mut err = Self::default();
        err.add(field, description);
        err
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.violations.push(FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// Collects the error of a field parser, keeping the value when it parsed.
    pub fn check<T>(&mut self, result: Result<T, ValidationError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.violations.extend(err.violations);
                None
            }
        }
    }

    /// `Ok(())` when no violation was collected.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid request: ")?;
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// Why a user operation failed. The transport edge maps each variant to one
/// status code in one place (`grpc::status`).
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("user {0} not found")]
    NotFound(String),
    #[error("a user with this email already exists")]
    AlreadyExists,
    /// The caller may not do this to this user (see `Actor`).
    #[error("{0}")]
    PermissionDenied(String),
    /// The store cannot be reached right now; the client may retry. The
    /// detail is for logs only.
    #[error("the user store is unavailable")]
    Unavailable(String),
    /// Too much work is queued (e.g. password hashing); the client may retry later.
    #[error("{0}")]
    Overloaded(String),
    /// A requested position is outside what the store can serve (a
    /// `WatchUsers` revision older than the retention window, or newer
    /// than the latest); the message says what is available.
    #[error("{0}")]
    OutOfRange(String),
    /// A bug or an unexpected store failure. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for DomainError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => DomainError::NotFound(id.to_string()),
            StoreError::EmailTaken => DomainError::AlreadyExists,
            StoreError::Unavailable(detail) => DomainError::Unavailable(detail),
            err @ StoreError::RevisionOutOfRange { .. } => DomainError::OutOfRange(err.to_string()),
            StoreError::Internal(detail) => DomainError::Internal(detail),
        }
    }
}
