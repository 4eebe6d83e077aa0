//! Typed, validated, layered settings.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config`) <
//! environment (`USER_SERVICE__SECTION__KEY`, then `RUST_LOG` for
//! `log.level`) < explicit CLI flags. Every
//! key lives in one struct tree below; unknown keys are errors, so a typo in
//! a file or a variable is caught at startup instead of silently ignored.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

mod secret;

pub use secret::{read_secret_file, Secret, StoreUrl};

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
    pub auth: AuthSettings,
    pub tls: TlsSettings,
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
    /// `user.v1.UserService` calls handled at once, over all connections;
    /// one more is answered RESOURCE_EXHAUSTED at once (load shedding).
    /// Streams count until their response headers only. Health and
    /// reflection are never limited. 0 = no limit: the right number depends
    /// on the CPUs the process gets, which the deployment knows (the Helm
    /// chart sets one).
    pub max_concurrent_requests: usize,
    /// Largest message, in bytes, received or sent. A larger request is
    /// answered RESOURCE_EXHAUSTED from its length prefix alone.
    pub max_message_size: usize,
    /// Largest header block (gRPC metadata) of a request, in bytes.
    pub max_metadata_size: u32,
    /// Serve gRPC reflection (v1 and v1alpha). It is public, like health,
    /// so turn it off where the API's shape should not be discoverable.
    pub reflection: bool,
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
            max_concurrent_requests: 0,
            max_message_size: 4 * 1024 * 1024,
            max_metadata_size: 16 * 1024,
            reflection: true,
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
    /// A file holding `url` (e.g. a mounted Kubernetes Secret), read once
    /// at startup, so the password need not sit in an environment variable.
    pub url_file: Option<PathBuf>,
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
    /// How many of the newest changes the store keeps so that a
    /// `WatchUsers` client can resume with `since_revision` (a count of
    /// revisions, not a duration: it bounds the memory store's ring and the
    /// PostgreSQL `user_changes` table alike, whatever the write rate). A
    /// client further behind gets OUT_OF_RANGE and must re-read the users.
    pub change_retention: usize,
    /// Memory store: users to load at startup (JSON Lines with password
    /// hashes, see `store/seed.rs`), for demos and load tests.
    pub seed_file: Option<PathBuf>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: StoreUrl::Memory,
            url_file: None,
            migrate: true,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            watch_buffer: 1024,
            change_retention: 10_000,
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
    /// `RUST_LOG`, when set, replaces it (below `--log-level`).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
    /// Hashes that may wait for a hashing thread. When that many wait,
    /// CreateUser answers RESOURCE_EXHAUSTED at once instead of queueing
    /// without bound (BulkCreateUsers waits: it is bounded by its own
    /// look-ahead and by the concurrency limit).
    pub password_hash_queue: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            bulk_max_items: 1_000,
            list_batch: 256,
            password_hash_concurrency: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2),
            password_hash_queue: 64,
        }
    }
}

/// `auth`: who may call. Key material comes from exactly one source; see
/// `crate::auth` for how tokens are checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Require a bearer JWT on every call but the public ones. Off by
    /// default so a local `cargo run` works without keys (startup warns);
    /// the Helm chart turns it on.
    pub enabled: bool,
    /// HS256 shared secret (at least 32 bytes). Prefer `jwt_secret_file`.
    pub jwt_secret: Option<Secret>,
    /// A file holding the HS256 secret (trailing whitespace is ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
    pub jwt_public_key_file: Option<PathBuf>,
    /// PEM private key, used only by `user-service token` to mint tokens
    /// that `jwt_public_key_file` verifies. Never needed to serve.
    pub jwt_private_key_file: Option<PathBuf>,
    /// An identity provider's JSON Web Key Set (`https://…/jwks.json`).
    pub jwks_url: Option<String>,
    /// How often the key set is fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// A token with an unknown `kid` triggers a fetch, at most this often.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh_interval: Duration,
    /// Limit of one key set fetch (connect + response).
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// When set, a token must carry exactly this `iss`.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must contain this value.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_private_key_file: None,
            jwks_url: None,
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_min_refresh_interval: Duration::from_secs(10),
            jwks_timeout: Duration::from_secs(5),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// TLS on the gRPC port (the admin port stays plaintext: probes and
/// Prometheus scrape it inside the cluster). Off unless both `cert_file`
/// and `key_file` are set. The files are re-read every `reload_interval`,
/// so a rotated certificate is served without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first (cert-manager's `tls.crt`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate: PKCS#8, PKCS#1 or SEC1
    /// (cert-manager's `tls.key`).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s): when set, clients must present a certificate
    /// signed by one of them (mTLS; cert-manager's `ca.crt`).
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are re-read. Polling, not inotify:
    /// Kubernetes swaps a Secret volume's `..data` symlink, which
    /// per-file watches miss.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// A client that has not finished the TLS handshake by then is
    /// disconnected.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl AuthSettings {
    /// The configured verification key sources, by key name.
    pub fn key_sources(&self) -> Vec<&'static str> {
        [
            ("auth.jwt_secret", self.jwt_secret.is_some()),
            ("auth.jwt_secret_file", self.jwt_secret_file.is_some()),
            (
                "auth.jwt_public_key_file",
                self.jwt_public_key_file.is_some(),
            ),
            ("auth.jwks_url", self.jwks_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// The HS256 secret, from `jwt_secret` or read from `jwt_secret_file`.
    pub fn hs_secret(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.jwt_secret_file else {
            return Ok(None);
        };
        read_secret_file("auth.jwt_secret_file", path).map(Some)
    }
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let paths = [
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
            ("tls.client_ca_file", &self.client_ca_file),
        ];
        for (key, path) in paths {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must be a path (leave it unset for no TLS)"
                )));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file: set both (TLS) or neither (plaintext)".into(),
            ));
        }
        if self.client_ca_file.is_some() && !self.enabled() {
            return Err(ConfigError::Invalid(
                "tls.client_ca_file: needs tls.cert_file and tls.key_file (mTLS is TLS plus client certificates)".into(),
            ));
        }
        Ok(())
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

    /// Rules that span keys or that serde cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.bulk_max_items", self.limits.bulk_max_items),
            ("limits.list_batch", self.limits.list_batch),
            (
                "limits.password_hash_concurrency",
                self.limits.password_hash_concurrency,
            ),
            (
                "limits.password_hash_queue",
                self.limits.password_hash_queue,
            ),
            ("store.watch_buffer", self.store.watch_buffer),
            ("store.change_retention", self.store.change_retention),
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
            (
                "auth.jwks_refresh_interval",
                self.auth.jwks_refresh_interval,
            ),
            ("auth.jwks_timeout", self.auth.jwks_timeout),
            // Zero would let every unknown `kid` trigger a fetch.
            (
                "auth.jwks_min_refresh_interval",
                self.auth.jwks_min_refresh_interval,
            ),
            ("tls.reload_interval", self.tls.reload_interval),
            ("tls.handshake_timeout", self.tls.handshake_timeout),
        ];
        for (key, value) in nonzero {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must be longer than 0s"
                )));
            }
        }
        self.tls.validate()?;
        // The same parse telemetry::init does, so a level accepted here is
        // the level the service logs at.
        crate::telemetry::log_filter(&self.log.level).map_err(|e| {
            ConfigError::Invalid(format!(
                "log.level (or RUST_LOG): expected a level (error, warn, info, debug, trace) or a filter like \"user_service=debug,info\": {e}"
            ))
        })?;
        self.validate_auth()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let sources = auth.key_sources();
        if sources.len() > 1 {
            return Err(ConfigError::Invalid(format!(
                "auth: {} are set; configure exactly one key source",
                sources.join(" and ")
            )));
        }
        if auth.enabled && sources.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.enabled: no key source; set one of auth.jwt_secret_file, auth.jwt_secret, auth.jwt_public_key_file or auth.jwks_url".into(),
            ));
        }
        if let Some(url) = &auth.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::Invalid(
                    "auth.jwks_url: expected an http:// or https:// URL".into(),
                ));
            }
        }
        for (key, value) in [
            ("auth.issuer", &auth.issuer),
            ("auth.audience", &auth.audience),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must not be empty (leave it unset to accept any)"
                )));
            }
        }
        // Parse the key material now, so a bad secret or PEM file is a
        // configuration error (exit code 2) like any other.
        crate::auth::keys::check(auth).map_err(|e| ConfigError::Invalid(e.to_string()))
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
