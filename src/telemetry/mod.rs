//! Logging (and, with the observability work, traces and metrics) set up
//! once at startup and flushed once at shutdown.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over
/// `log.level`. Transport crates are capped at `warn` unless a directive
/// names them, so `debug` stays readable.
pub fn init(log: &LogSettings) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| log.level.clone());
    let filter = EnvFilter::try_new(with_quiet_transport(&directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match log.format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
    };
    // Already installed (tests start several servers in one process).
    let _ = result;
}

fn with_quiet_transport(directives: &str) -> String {
    let mut out = directives.to_owned();
    for noisy in ["h2", "hyper", "hyper_util", "tower", "tonic", "axum"] {
        if !directives.contains(noisy) {
            out.push_str(&format!(",{noisy}=warn"));
        }
    }
    out
}
