//! Typed, validated, layered settings.
//!
//! What lives where: `settings.rs` the types (one struct per section, their
//! defaults, how serde reads them); `load.rs` the layering and the error
//! wording; `validate.rs` the rules that span keys; `secret.rs` the values
//! that must never be printed. Nothing here starts a task or opens a socket.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config`) <
//! environment (`USER_SERVICE__SECTION__KEY`, then `RUST_LOG` for
//! `log.level`) < explicit CLI flags. Every
//! key lives in one struct tree (`settings.rs`); unknown keys are errors, so
//! a typo in a file or a variable is caught at startup instead of silently
//! ignored.

use std::path::PathBuf;

mod load;
mod secret;
mod settings;
mod validate;

pub use load::{Sources, ENV_PREFIX, ENV_SEPARATOR};
pub use secret::{read_secret_file, Secret, StoreUrl};
pub use settings::{
    AdminSettings, AuthSettings, GrpcSettings, HealthSettings, LimitSettings, LogFormat,
    LogSettings, Settings, ShutdownSettings, StoreSettings, TelemetrySettings, TlsSettings,
};

/// Why settings could not be loaded: one line, naming the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
