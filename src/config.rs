//! Typed, validated, layered settings.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config`) <
//! environment (`USER_SERVICE__SECTION__KEY`) < explicit CLI flags. Every
//! key lives in one struct tree below; unknown keys are errors, so a typo in
//! a file or a variable is caught at startup instead of silently ignored.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The environment prefix: `USER_SERVICE__GRPC__ADDR` sets `grpc.addr`.
pub const ENV_PREFIX: &str = "USER_SERVICE";
pub const ENV_SEPARATOR: &str = "__";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub admin: AdminSettings,
    pub store: StoreSettings,
    pub shutdown: ShutdownSettings,
    pub health: HealthSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub limits: LimitSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    pub addr: SocketAddr,
    /// Deadline for calls whose client sent none (`grpc-timeout` wins when
    /// it is shorter). Streams are not cut by it.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Connections are closed (gracefully) after about this long, so clients
    /// reconnect and spread over replicas added since. A random ±10% is
    /// applied per process so replicas do not all recycle at once.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// How long in-flight calls may take to finish on an aged connection.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 PING interval to detect dead peers.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Concurrent calls per connection.
    pub max_concurrent_streams: u32,
    /// Largest message, in bytes, received or sent. A larger request is
    /// answered RESOURCE_EXHAUSTED from its length prefix alone.
    pub max_message_size: usize,
    /// Largest header block (gRPC metadata) of a request, in bytes.
    pub max_metadata_size: u32,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            default_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(300),
            max_connection_age_grace: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1024,
            max_message_size: 4 * 1024 * 1024,
            max_metadata_size: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// `/livez`, `/readyz`, `/metrics`.
    pub addr: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory://` or `postgres://user:password@host:port/db`.
    pub url: StoreUrl,
    /// PostgreSQL: apply migrations at startup (under an advisory lock).
    pub migrate: bool,
    /// PostgreSQL: pool size.
    pub max_connections: u32,
    /// PostgreSQL: how long a call waits for a pooled connection before it
    /// fails with UNAVAILABLE. Short, so an outage fails fast.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// PostgreSQL: TCP connect + handshake limit for the connections of
    /// migrations (`user-service migrate` included) and of the event
    /// listener. Request connections are opened within `acquire_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL: server-side `statement_timeout` for every query.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Events a slow `WatchUsers` subscriber may fall behind before it is
    /// dropped with RESOURCE_EXHAUSTED.
    pub watch_buffer: usize,
    /// Memory store: users to load at startup (JSON Lines with password
    /// hashes, see `store/seed.rs`), for demos and load tests.
    pub seed_file: Option<PathBuf>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: StoreUrl::memory(),
            migrate: true,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            watch_buffer: 1024,
            seed_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM: keep serving (while reporting NOT_SERVING) this long,
    /// so load balancers stop sending new calls before we stop accepting.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Then: the most time in-flight calls get to finish; streams still
    /// open after it are cancelled.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// How often readiness re-checks the store.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// A store check slower than this counts as a failure.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter: `info`, `debug`, `user_service=debug,info`, ...
    /// `RUST_LOG`, when set, takes precedence.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector endpoint, e.g. `http://otel-collector:4317`.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is used when this is unset; with
    /// neither, traces are not exported.
    pub otlp_endpoint: Option<String>,
    /// Trace `grpc.health.v1.Health` calls too (off: probes are noise).
    pub trace_health_checks: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Items accepted per `BulkCreateUsers` stream; the rest are refused.
    pub bulk_max_items: usize,
    /// Users read from the store per round trip while streaming `ListUsers`.
    pub list_batch: usize,
    /// Password hashes computed at once (each takes ~19 MiB and a core).
    pub password_hash_concurrency: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            bulk_max_items: 1_000,
            list_batch: 256,
            password_hash_concurrency: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2),
        }
    }
}

/// `store.url`: a URL that may carry a password, so it never prints one.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn memory() -> Self {
        Self("memory://".into())
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.split_once("://") {
            Some(("memory", "")) => Ok(Self(raw.to_owned())),
            Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => Ok(Self(raw.to_owned())),
            _ => Err("expected memory:// or postgres://user:password@host:port/database".into()),
        }
    }

    /// `memory` or `postgres`.
    pub fn scheme(&self) -> &str {
        match self.0.split_once("://") {
            Some(("postgresql", _)) => "postgres",
            Some((scheme, _)) => scheme,
            None => "",
        }
    }

    /// The full URL, password included: only for handing to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        // userinfo ends at the last '@' before the first '/'.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                let masked = if userinfo.contains(':') { ":***" } else { "" };
                // A password may also hide in the query (`?password=`).
                let tail = redact_query_password(tail);
                format!("{scheme}://{user}{masked}@{host}{tail}")
            }
            None => format!("{scheme}://{authority}{}", redact_query_password(tail)),
        }
    }
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

impl Default for StoreUrl {
    fn default() -> Self {
        Self::memory()
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

// Serialising is how `--print-config` shows settings, so it redacts; the
// config loader never serialises a URL it read (defaults only), so nothing
// is lost.
impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        StoreUrl::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Why settings could not be loaded: one line, naming the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

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

        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(sources.env),
        );
        for (key, value) in sources.overrides {
            builder = builder
                .set_override(key, value)
                .map_err(|e| ConfigError::Invalid(describe(e)))?;
        }

        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rules that span keys or that serde cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.bulk_max_items", self.limits.bulk_max_items),
            ("limits.list_batch", self.limits.list_batch),
            (
                "limits.password_hash_concurrency",
                self.limits.password_hash_concurrency,
            ),
            ("store.watch_buffer", self.store.watch_buffer),
            ("store.max_connections", self.store.max_connections as usize),
            (
                "grpc.max_concurrent_streams",
                self.grpc.max_concurrent_streams as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key}: must be at least 1")));
            }
        }
        let nonzero = [
            ("shutdown.timeout", self.shutdown.timeout),
            ("grpc.default_timeout", self.grpc.default_timeout),
            ("grpc.max_connection_age", self.grpc.max_connection_age),
            ("health.check_interval", self.health.check_interval),
            ("health.check_timeout", self.health.check_timeout),
            ("store.acquire_timeout", self.store.acquire_timeout),
            ("store.connect_timeout", self.store.connect_timeout),
            ("store.statement_timeout", self.store.statement_timeout),
        ];
        for (key, value) in nonzero {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must be longer than 0s"
                )));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError::Invalid(format!(
                "log.level: expected a level (error, warn, info, debug, trace) or a filter like \"user_service=debug,info\": {e}"
            ))
        })?;
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
    fn redacts_passwords_in_urls() {
        let url = StoreUrl::parse("postgres://app:s3cr3t@db:5432/users?sslmode=require").unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db:5432/users?sslmode=require"
        );
        assert!(!format!("{url:?} {url}").contains("s3cr3t"));
        let url = StoreUrl::parse("postgres://app:p%40ss@w@rd@db/users").unwrap();
        assert!(!url.redacted().contains("rd"), "{}", url.redacted());
        let url = StoreUrl::parse("postgres://db/users?user=app&password=s3cr3t").unwrap();
        assert_eq!(url.redacted(), "postgres://db/users?user=app&password=***");
        assert_eq!(StoreUrl::memory().redacted(), "memory://");
    }

    #[test]
    fn store_url_scheme_is_checked() {
        assert!(StoreUrl::parse("memory://").is_ok());
        assert!(StoreUrl::parse("postgresql://db/users").is_ok());
        assert!(StoreUrl::parse("mysql://db/users").is_err());
        assert!(StoreUrl::parse("memory").is_err());
    }

    #[test]
    fn print_config_never_shows_the_password() {
        let mut settings = Settings::default();
        settings.store.url = StoreUrl::parse("postgres://app:s3cr3t@db/users").unwrap();
        let text = settings.to_redacted_toml();
        assert!(text.contains("postgres://app:***@db/users"), "{text}");
        assert!(!text.contains("s3cr3t"));
    }
}
