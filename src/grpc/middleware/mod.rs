//! The per-call path: tower layers at the HTTP level, below tonic's codecs,
//! so every service (ours, health, reflection) is treated the same. Each
//! concern has one owner:
//!
//! - [`methods`]: which RPCs exist and their streaming type (from the
//!   compiled-in descriptors);
//! - [`observe`]: metrics, the call's span and its `finished call` line;
//! - [`limit`]: load shedding at `grpc.max_concurrent_requests`;
//! - [`deadline`]: the call's deadline, parsed once and enforced;
//! - [`body`]: the one message-counting body both directions use;
//! - authentication lives in `crate::auth`, as a layer placed here.
//!
//! [`stack`] is the one place that puts them in order. Nothing here knows
//! the domain; handlers read what the layers found in request extensions.

pub mod body;
pub mod deadline;
pub mod limit;
pub mod methods;
pub mod observe;

use std::time::Duration;

use tower::{layer::util::Identity, layer::util::Stack, ServiceBuilder};

use crate::auth::AuthLayer;

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
    /// `user.v1.UserService` calls handled at once; 0 = no limit.
    pub max_concurrent_requests: usize,
}

/// The layers around every call, outermost first:
/// 1. observe — sees the final answer of everything inside it, refusals
///    of the layers below included;
/// 2. limit — sheds calls over `grpc.max_concurrent_requests` with
///    RESOURCE_EXHAUSTED, so (1) counts and logs them like any answer, and
///    before (3) and (4) spend anything on a call that will be refused;
/// 3. deadline — answers DEADLINE_EXCEEDED itself, so (1) records it;
/// 4. auth — the bearer token, before any handler runs (`crate::auth`).
#[allow(clippy::type_complexity)] // the type is the stack, spelled out
pub fn stack(
    options: StackOptions,
    auth: AuthLayer,
) -> ServiceBuilder<
    Stack<
        AuthLayer,
        Stack<
            deadline::DeadlineLayer,
            Stack<limit::LimitLayer, Stack<observe::ObserveLayer, Identity>>,
        >,
    >,
> {
    ServiceBuilder::new()
        .layer(observe::ObserveLayer::new(observe::ObserveOptions {
            trace_health_checks: options.trace_health_checks,
            max_message_size: options.max_message_size,
        }))
        .layer(limit::LimitLayer::new(options.max_concurrent_requests))
        .layer(deadline::DeadlineLayer::new(options.default_timeout))
        .layer(auth)
}
