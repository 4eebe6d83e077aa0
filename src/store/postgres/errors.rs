//! Error classification: what a driver error means for the caller
//! (`EmailTaken`, retryable `Unavailable`, or `Internal`).

use crate::domain::StoreError;

/// The unique index behind case-insensitive email uniqueness (see the
/// migration); its violation is [`StoreError::EmailTaken`].
const EMAIL_UNIQUE_INDEX: &str = "users_email_key_unique";

/// Maps a driver error to the store's vocabulary. `op` names what we were
/// doing, for the logs; nothing here reaches clients (see `grpc::status`).
/// sqlx errors carry no connection URL or password.
pub(super) fn classify(op: &str, err: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => {
            if db.is_unique_violation() && db.constraint() == Some(EMAIL_UNIQUE_INDEX) {
                return StoreError::EmailTaken;
            }
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let detail = format!("{op}: {} (SQLSTATE {code})", db.message());
            if retryable_sqlstate(&code) {
                StoreError::Unavailable(detail)
            } else {
                StoreError::Internal(detail)
            }
        }
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
            StoreError::Unavailable(format!("{op}: {err}"))
        }
        other => StoreError::Internal(format!("{op}: {other}")),
    }
}

/// SQLSTATEs after which the same call may succeed later, without anyone
/// changing the code: the database is not ready yet, or gone for now. They
/// become UNAVAILABLE, which clients retry with backoff (and which readiness
/// and the error-budget alerts already account for); everything else is a
/// bug or corrupted data and becomes INTERNAL.
fn retryable_sqlstate(code: &str) -> bool {
    matches!(
        code,
        // query_canceled: our statement_timeout fired.
        "57014"
            // admin_shutdown, crash_shutdown, cannot_connect_now: the
            // server is going away or coming back.
            | "57P01" | "57P02" | "57P03"
            // serialization_failure, deadlock_detected.
            | "40001" | "40P01"
            // undefined_table, undefined_column: the schema is older than
            // this binary, i.e. a call reached a replica (not ready yet)
            // before its migrations were applied by the hook Job or
            // another replica. Our statements are fixed and tested against
            // the embedded migrations, so outside that window these do not
            // happen; the SQLSTATE stays in the log line either way.
            | "42P01" | "42703"
    ) || code.starts_with("08") // connection_exception class
        || code.starts_with("53") // insufficient_resources (too many connections, disk full)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error as the driver reports it, with only a SQLSTATE
    /// (PgDatabaseError cannot be built outside sqlx).
    #[derive(Debug)]
    struct FakeDbError {
        code: &'static str,
        constraint: Option<&'static str>,
    }

    impl std::fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fake error {}", self.code)
        }
    }

    impl std::error::Error for FakeDbError {}

    impl sqlx::error::DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            "relation \"users\" does not exist"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.code.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            match self.code {
                "23505" => sqlx::error::ErrorKind::UniqueViolation,
                _ => sqlx::error::ErrorKind::Other,
            }
        }
    }

    fn db_error(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeDbError {
            code,
            constraint: None,
        }))
    }

    #[test]
    fn not_ready_yet_and_gone_for_now_sqlstates_are_unavailable() {
        for code in [
            "42P01", // undefined_table: migrations not applied yet
            "42703", // undefined_column: a pending migration adds it
            "57P01", // admin_shutdown
            "57P02", // crash_shutdown
            "57P03", // cannot_connect_now (starting up, recovering)
            "08000", // connection_exception
            "08003", // connection_does_not_exist
            "08006", // connection_failure
            "57014", // query_canceled by statement_timeout
            "53300", // too_many_connections
            "40001", // serialization_failure
            "40P01", // deadlock_detected
        ] {
            assert!(retryable_sqlstate(code), "{code}");
            match classify("get user", db_error(code)) {
                StoreError::Unavailable(detail) => {
                    assert!(detail.contains(code), "{detail}");
                    assert!(detail.starts_with("get user: "), "{detail}");
                }
                other => panic!("{code} classified as {other:?}"),
            }
        }
    }

    #[test]
    fn bugs_and_bad_data_sqlstates_are_internal() {
        for code in [
            "42601", // syntax_error
            "42883", // undefined_function
            "42501", // insufficient_privilege: needs an operator, not a retry
            "22001", // string_data_right_truncation
            "23502", // not_null_violation
            "23505", // a unique violation of some other index
            "XX000", // internal_error
            "",
        ] {
            assert!(!retryable_sqlstate(code), "{code}");
            assert!(
                matches!(classify("x", db_error(code)), StoreError::Internal(_)),
                "{code}"
            );
        }
    }

    #[test]
    fn the_email_index_violation_is_email_taken() {
        let err = sqlx::Error::Database(Box::new(FakeDbError {
            code: "23505",
            constraint: Some(EMAIL_UNIQUE_INDEX),
        }));
        assert!(matches!(classify("x", err), StoreError::EmailTaken));
    }

    #[test]
    fn pool_and_io_failures_are_unavailable() {
        for err in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert!(
                matches!(classify("x", err), StoreError::Unavailable(_)),
                "Unavailable expected"
            );
        }
        assert!(matches!(
            classify("x", sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
        assert!(matches!(
            classify("x", sqlx::Error::Protocol("garbled".into())),
            StoreError::Internal(_)
        ));
    }
}
