//! Loading: the layers (defaults < file < environment < `RUST_LOG` < CLI
//! flags) merged into one `Settings`, secret files read, and the config
//! crate's errors reworded into one line naming the key.

use std::{collections::HashMap, path::Path};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use super::{
    read_secret_file, AdminSettings, AuthSettings, ConfigError, GrpcSettings, HealthSettings,
    LimitSettings, LogSettings, Settings, ShutdownSettings, StoreSettings, StoreUrl,
    TelemetrySettings, TlsSettings,
};

/// The environment prefix: `USER_SERVICE__GRPC__ADDR` sets `grpc.addr`.
pub const ENV_PREFIX: &str = "USER_SERVICE";
pub const ENV_SEPARATOR: &str = "__";

/// Where settings come from, apart from the built-in defaults.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// `--config PATH`.
    pub file: Option<&'a Path>,
    /// The environment; `None` reads the process environment. Tests pass a
    /// map so they need not mutate the (shared) process environment.
    pub env: Option<HashMap<String, String>>,
    /// Explicit CLI flags as (`section.key`, value).
    pub overrides: Vec<(&'static str, String)>,
}

impl Settings {
    pub fn load(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let defaults = Config::try_from(&Settings::default())
            .map_err(|e| ConfigError::Invalid(format!("built-in defaults: {e}")))?;
        let mut builder = Config::builder().add_source(defaults);

        if let Some(path) = sources.file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            // Parse the file on its own first, so a mistake in it is
            // reported against the file rather than the merged result.
            let file_layer = Config::builder()
                .add_source(File::from_str(&text, FileFormat::Toml))
                .build()
                .and_then(|c| c.try_deserialize::<PartialCheck>())
                .map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    reason: describe(e),
                });
            file_layer?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }

        // RUST_LOG is the ecosystem's name for log.level: applied here, as
        // a layer above USER_SERVICE__LOG__LEVEL and below --log-level, so
        // it is validated with everything else and --print-config shows it.
        let rust_log = match &sources.env {
            Some(env) => env.get("RUST_LOG").cloned(),
            None => std::env::var("RUST_LOG").ok(),
        }
        .filter(|v| !v.trim().is_empty());
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(sources.env),
        );
        if let Some(level) = rust_log {
            builder = builder
                .set_override("log.level", level)
                .map_err(|e| ConfigError::Invalid(describe(e)))?;
        }
        for (key, value) in sources.overrides {
            builder = builder
                .set_override(key, value)
                .map_err(|e| ConfigError::Invalid(describe(e)))?;
        }

        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        settings.read_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Replaces `store.url` by the content of `store.url_file`. The JWT
    /// secret file is read where it is used (`AuthSettings::hs_secret`),
    /// and checked by `validate`, so a bad file still stops startup.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.store.url_file {
            if self.store.url != StoreUrl::Memory {
                return Err(ConfigError::Invalid(
                    "store.url_file: set either store.url or store.url_file, not both".into(),
                ));
            }
            let raw = read_secret_file("store.url_file", path)?;
            self.store.url = StoreUrl::parse(raw.expose()).map_err(|reason| {
                ConfigError::Invalid(format!("store.url_file: {}: {reason}", path.display()))
            })?;
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted (`--print-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// Deserialises a file on its own: every section optional, unknown keys
/// rejected, values type-checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only for its validation
struct PartialCheck {
    grpc: Option<GrpcSettings>,
    admin: Option<AdminSettings>,
    store: Option<StoreSettings>,
    shutdown: Option<ShutdownSettings>,
    health: Option<HealthSettings>,
    log: Option<LogSettings>,
    telemetry: Option<TelemetrySettings>,
    limits: Option<LimitSettings>,
    auth: Option<AuthSettings>,
    tls: Option<TlsSettings>,
}

/// Turns the config crate's error into one line that names the key and,
/// where the crate's words are terse, what was expected.
fn describe(err: config::ConfigError) -> String {
    let text = err.to_string();
    let key = text
        .split_once("for key `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key);
    let hint = match key {
        Some("log.format") => Some("expected \"text\" or \"json\""),
        Some(k) if k.ends_with(".addr") => Some("expected an IP socket address like 0.0.0.0:50051"),
        _ if text.contains("expected a duration") => {
            Some("expected a duration like 250ms, 5s or 1m")
        }
        _ => None,
    };
    match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_config_never_shows_the_password() {
        let mut settings = Settings::default();
        settings.store.url = StoreUrl::parse("postgres://app:s3cr3t@db/users").unwrap();
        let text = settings.to_redacted_toml();
        assert!(text.contains("postgres://app:***@db/users"), "{text}");
        assert!(!text.contains("s3cr3t"));
    }
}
