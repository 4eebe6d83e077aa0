//! Everything we say about a gRPC status code, in one table: its
//! grpc-go spelling (the `grpc_code` metric label), its canonical name
//! (`rpc.response.status_code`, `BulkCreateError.code`), how loud its
//! `finished call` line is, and whether OpenTelemetry calls it a server
//! error.

use tonic::Code;

/// How loud the `finished call` line is, per go-grpc-middleware's default:
/// client mistakes are info, trouble worth a look is warn, bugs are error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct CodeInfo {
    pub code: Code,
    /// grpc-go's `codes.Code.String()` (`OK`, `Canceled`), which is what
    /// go-grpc-prometheus puts in `grpc_code`. tonic's Debug output differs
    /// (`Ok`, `Cancelled`).
    pub go_name: &'static str,
    /// The canonical upper-case name (`INVALID_ARGUMENT`).
    pub name: &'static str,
    pub log_level: LogLevel,
    /// The codes the OpenTelemetry semantic conventions call server errors
    /// (span status ERROR); the rest are the client's problem.
    pub server_error: bool,
}

const fn row(
    code: Code,
    go_name: &'static str,
    name: &'static str,
    log_level: LogLevel,
    server_error: bool,
) -> CodeInfo {
    CodeInfo {
        code,
        go_name,
        name,
        log_level,
        server_error,
    }
}

use LogLevel::{Error, Info, Warn};

/// Every code, indexed by its number.
pub const CODES: [CodeInfo; 17] = [
    row(Code::Ok, "OK", "OK", Info, false),
    row(Code::Cancelled, "Canceled", "CANCELLED", Info, false),
    row(Code::Unknown, "Unknown", "UNKNOWN", Error, true),
    row(
        Code::InvalidArgument,
        "InvalidArgument",
        "INVALID_ARGUMENT",
        Info,
        false,
    ),
    row(
        Code::DeadlineExceeded,
        "DeadlineExceeded",
        "DEADLINE_EXCEEDED",
        Warn,
        true,
    ),
    row(Code::NotFound, "NotFound", "NOT_FOUND", Info, false),
    row(
        Code::AlreadyExists,
        "AlreadyExists",
        "ALREADY_EXISTS",
        Info,
        false,
    ),
    row(
        Code::PermissionDenied,
        "PermissionDenied",
        "PERMISSION_DENIED",
        Warn,
        false,
    ),
    row(
        Code::ResourceExhausted,
        "ResourceExhausted",
        "RESOURCE_EXHAUSTED",
        Warn,
        false,
    ),
    row(
        Code::FailedPrecondition,
        "FailedPrecondition",
        "FAILED_PRECONDITION",
        Warn,
        false,
    ),
    row(Code::Aborted, "Aborted", "ABORTED", Warn, false),
    row(Code::OutOfRange, "OutOfRange", "OUT_OF_RANGE", Warn, false),
    row(
        Code::Unimplemented,
        "Unimplemented",
        "UNIMPLEMENTED",
        Error,
        true,
    ),
    row(Code::Internal, "Internal", "INTERNAL", Error, true),
    row(Code::Unavailable, "Unavailable", "UNAVAILABLE", Warn, true),
    row(Code::DataLoss, "DataLoss", "DATA_LOSS", Error, true),
    row(
        Code::Unauthenticated,
        "Unauthenticated",
        "UNAUTHENTICATED",
        Info,
        false,
    ),
];

/// The row of `code`.
pub fn info(code: Code) -> &'static CodeInfo {
    // `Code` is a fieldless enum numbered 0..=16, so the index is in range;
    // the fallback only keeps this total.
    CODES
        .get(code as usize)
        .unwrap_or(&CODES[Code::Unknown as usize])
}

/// The canonical upper-case name of a code (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    info(code).name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_indexed_by_number() {
        for (i, row) in CODES.iter().enumerate() {
            assert_eq!(row.code as usize, i, "{}", row.name);
            assert_eq!(Code::from_i32(i as i32), row.code);
        }
    }

    #[test]
    fn codes_are_spelled_like_grpc_go_and_the_spec() {
        let go = |c| info(c).go_name;
        assert_eq!(go(Code::Ok), "OK");
        assert_eq!(go(Code::Cancelled), "Canceled");
        assert_eq!(go(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(go(Code::DeadlineExceeded), "DeadlineExceeded");
        assert_eq!(code_name(Code::Cancelled), "CANCELLED");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        // grpc-go's names are the canonical ones in CamelCase.
        for row in &CODES {
            let camel: String = row
                .name
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_lowercase())
                .collect();
            let expected = match row.code {
                Code::Ok => "OK".to_owned(),
                Code::Cancelled => "Canceled".to_owned(),
                _ => camel,
            };
            assert_eq!(row.go_name, expected);
        }
    }

    #[test]
    fn log_levels_follow_the_code() {
        let level = |c| info(c).log_level;
        assert_eq!(level(Code::Ok), LogLevel::Info);
        assert_eq!(level(Code::NotFound), LogLevel::Info);
        assert_eq!(level(Code::InvalidArgument), LogLevel::Info);
        assert_eq!(level(Code::AlreadyExists), LogLevel::Info);
        assert_eq!(level(Code::DeadlineExceeded), LogLevel::Warn);
        assert_eq!(level(Code::Unavailable), LogLevel::Warn);
        assert_eq!(level(Code::ResourceExhausted), LogLevel::Warn);
        assert_eq!(level(Code::Internal), LogLevel::Error);
        assert_eq!(level(Code::Unknown), LogLevel::Error);
        assert_eq!(level(Code::DataLoss), LogLevel::Error);
        assert!(info(Code::Internal).server_error);
        assert!(!info(Code::NotFound).server_error);
    }
}
