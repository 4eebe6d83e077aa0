//! The settings types: one struct per section, their built-in defaults and
//! how serde reads them. Data only: how the layers are merged lives in
//! `load.rs`, the rules that span keys in `validate.rs`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{read_secret_file, ConfigError, Secret, StoreUrl};

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
    /// Concurrent calls (HTTP/2 streams) per connection; the client waits
    /// for a free one beyond that. This is what keeps a saturated core's
    /// latency bounded: the backlog of a client that keeps hundreds of
    /// calls in flight on one connection waits in hyper's HTTP/2 handling,
    /// before any layer of ours sees it, so only this cap moves it back to
    /// the client (RELIABILITY.md, "Overload": at 2x saturation the
    /// accepted p99 is 8.5x nominal at 64, 30x at 100, 165x at 1024), and
    /// the Helm chart sets 64. The binary keeps 1024: at a small cap, a
    /// tonic client with more calls than that in flight on one connection
    /// sees some fail UNAVAILABLE "h2 protocol error" when the server
    /// answers calls before reading their request (refusals, auth
    /// failures), as the two ends count the closed streams at different
    /// moments: the server resets the stream with REFUSED_STREAM, which
    /// grpc-go clients and this crate's client retry, plain tonic does not.
    /// Long-lived streams count too: a client holding more `WatchUsers`
    /// streams than this on one connection needs a higher value or a
    /// channel of its own for them.
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
    /// look-ahead and by the concurrency limit). The default is
    /// [`HASHES_QUEUED_PER_THREAD`] per default hashing thread.
    pub password_hash_queue: usize,
}

/// Why 8: a sign-up that finds the queue nearly full waits for about that
/// many hashes (~15 ms each on one core) before its own, ~9x one hash,
/// which keeps accepted sign-ups within 10x of their normal latency at
/// twice the pod's hashing capacity (RELIABILITY.md, "Overload"; a queue
/// of 64 let them wait 57x). Beyond it refusing at once is kinder: the
/// client backs off or tries another replica.
pub const HASHES_QUEUED_PER_THREAD: usize = 8;

impl Default for LimitSettings {
    fn default() -> Self {
        let hashing_threads = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2);
        Self {
            bulk_max_items: 1_000,
            list_batch: 256,
            password_hash_concurrency: hashing_threads,
            password_hash_queue: HASHES_QUEUED_PER_THREAD * hashing_threads,
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
}
