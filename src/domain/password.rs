use std::{fmt, sync::Arc};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordVerifier, SaltString},
    Argon2,
};
use tokio::sync::Semaphore;

use super::{DomainError, ValidationError};

const PASSWORD_MIN_CHARS: usize = 8;
const PASSWORD_MAX_CHARS: usize = 1024;

/// A plaintext password on its way to the hasher. It cannot be printed:
/// `Debug` is redacted and there is no `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
            return Err(ValidationError::single(
                "password",
                format!("must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters long"),
            ));
        }
        Ok(Self(raw))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Hashes passwords with argon2id on the blocking pool.
///
/// Hashing is deliberately slow and memory-hard (~19 MiB each with the
/// default parameters), so it must never run on the async workers, and the
/// number of hashes in flight is capped: a burst of `BulkCreateUsers` queues
/// here instead of exhausting memory or starving other requests.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// Returns the PHC string (`$argon2id$v=19$...`) for `password`.
    pub async fn hash(&self, password: Password) -> Result<String, DomainError> {
        // Waiting for a permit is cancelled with the request (deadline or
        // client gone), so a queue of abandoned work cannot build up.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DomainError::Internal("password hasher closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2::PasswordHasher::hash_password(&Argon2::default(), password.0.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| DomainError::Internal(format!("password hashing failed: {e}")))
        })
        .await
        .map_err(|e| DomainError::Internal(format!("password hashing task failed: {e}")))?
    }

    /// Checks `password` against a stored PHC string (used by tests and by
    /// whoever adds authentication on top of this service).
    pub fn verify(password: &str, phc: &str) -> bool {
        PasswordHash::new(phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_characters() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("ü".repeat(1024)).is_ok());
        assert!(Password::parse("ü".repeat(1025)).is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::parse("hunter2hunter2".into()).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let hasher = PasswordHasher::new(2);
        let a = hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        let b = hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(PasswordHasher::verify("correct horse", &a));
        assert!(!PasswordHasher::verify("wrong horse", &a));
    }
}
