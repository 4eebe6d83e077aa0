//! The per-call path: tower layers at the HTTP level, below tonic's codecs,
//! so every service (ours, health, reflection) is treated the same. Each
//! concern has one owner:
//!
//! - [`methods`]: which RPCs exist and their streaming type (from the
//!   compiled-in descriptors);
//! - [`observe`]: metrics, the call's span and its `finished call` line;
//! - [`deadline`]: the call's deadline, parsed once and enforced;
//! - [`body`]: the one message-counting body both directions use.
//!
//! [`stack`] is the one place that puts them in order. Nothing here knows
//! the domain; handlers read what the layers found in request extensions.

pub mod body;
pub mod deadline;
pub mod methods;
pub mod observe;

use std::time::Duration;

use tower::{layer::util::Identity, layer::util::Stack, ServiceBuilder};

pub use deadline::CallDeadline;
pub use methods::GrpcType;

/// What the stack needs from the settings.
#[derive(Debug, Clone, Copy)]
pub struct StackOptions {
    pub trace_health_checks: bool,
    /// Deadline for calls whose client sent none (a shorter `grpc-timeout`
    /// wins).
    pub default_timeout: Duration,
    /// Largest request message, in bytes.
    pub max_message_size: usize,
}

/// The layers around every call, outermost first:
/// 1. observe — sees the final answer of everything inside it;
/// 2. deadline — answers DEADLINE_EXCEEDED itself, so (1) records it.
pub fn stack(
    options: StackOptions,
) -> ServiceBuilder<Stack<deadline::DeadlineLayer, Stack<observe::ObserveLayer, Identity>>> {
    ServiceBuilder::new()
        .layer(observe::ObserveLayer::new(observe::ObserveOptions {
            trace_health_checks: options.trace_health_checks,
            max_message_size: options.max_message_size,
        }))
        .layer(deadline::DeadlineLayer::new(options.default_timeout))
}
