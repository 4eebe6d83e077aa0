//! Failures in the terms a caller acts on: a `Status` mapped to a typed
//! `ClientError`, and the test for a request that never reached the server
//! (which any call may send again).

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Why a call failed, in the terms a caller acts on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("invalid request: {}", format_violations(.0))]
    Invalid(Vec<(String, String)>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{code:?}: {message}")]
    Other { code: Code, message: String },
}

fn format_violations(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => {
                let violations = status
                    .get_details_bad_request()
                    .map(|br| {
                        br.field_violations
                            .into_iter()
                            .map(|v| (v.field, v.description))
                            .collect()
                    })
                    .unwrap_or_else(|| vec![(String::new(), message.clone())]);
                ClientError::Invalid(violations)
            }
            Code::NotFound => ClientError::NotFound(message),
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            Code::Unavailable => ClientError::Unavailable(message),
            // tonic reports a connection that broke under a call (e.g. the
            // server refused our certificate after a TLS 1.3 handshake) as
            // UNKNOWN "transport error"; gRPC calls that UNAVAILABLE, and
            // the cause is in the error's sources.
            Code::Unknown => match std::error::Error::source(&status) {
                Some(source) if source.is::<tonic::transport::Error>() => {
                    ClientError::Unavailable(error_chain(source))
                }
                _ => ClientError::Other {
                    code: Code::Unknown,
                    message,
                },
            },
            code => ClientError::Other { code, message },
        }
    }
}

/// The server cannot have processed the request: hyper cancelled it
/// before writing a byte (its connection was closing), h2 refused or
/// ended it because of the server's GOAWAY with NO_ERROR, which by HTTP/2
/// (RFC 9113 §6.8) covers only streams the server did not process, or the
/// server reset the stream with REFUSED_STREAM, which means the same
/// (§8.7). The last happens at a small `grpc.max_concurrent_streams` (the
/// Helm chart's 64) when many calls on one connection are answered before
/// their request was read: the client reuses a stream slot the server has
/// not released yet. grpc-go retries these transparently; so do we.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let reason = h2.reason();
            return h2.is_remote()
                && ((h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = err.source();
    }
    false
}

/// An error and its causes on one line: tonic's transport error alone says
/// only "transport error", the cause (refused, untrusted certificate...)
/// is in its sources.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
