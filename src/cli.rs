//! Command-line interface: flags that override configuration, and
//! subcommands.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, Settings, Sources};

const ENV_HELP: &str = "\
CONFIGURATION (lowest precedence first):
  built-in defaults < --config FILE (TOML) < environment < flags

  Every key can be set by an environment variable named
  USER_SERVICE__<SECTION>__<KEY>, e.g.
    USER_SERVICE__GRPC__ADDR=0.0.0.0:50051
    USER_SERVICE__STORE__URL=postgres://app:secret@db:5432/users
    USER_SERVICE__SHUTDOWN__DRAIN_DELAY=5s
    USER_SERVICE__LOG__FORMAT=json
    USER_SERVICE__AUTH__JWT_SECRET_FILE=/run/secrets/jwt-secret
  RUST_LOG, when set, replaces log.level (--log-level still wins). OTEL_EXPORTER_OTLP_ENDPOINT,
  OTEL_SERVICE_NAME and the other OTEL_* variables configure tracing.
  See config/example.toml for every key with its default.";

#[derive(Debug, Parser)]
#[command(name = "user-service", version, about = "The user.v1.UserService gRPC server.", after_help = ENV_HELP)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short, long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// gRPC listen address (grpc.addr).
    #[arg(long, value_name = "ADDR", global = true)]
    pub grpc_addr: Option<String>,
    /// Admin HTTP listen address for /livez, /readyz, /metrics (admin.addr).
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin_addr: Option<String>,
    /// memory:// or postgres://user:password@host:port/db (store.url).
    #[arg(long, value_name = "URL", global = true)]
    pub store_url: Option<String>,
    /// Log filter, e.g. info or user_service=debug,info (log.level).
    #[arg(long, value_name = "FILTER", global = true)]
    pub log_level: Option<String>,
    /// Log line format (log.format).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve gRPC and admin HTTP until SIGTERM/SIGINT (the default).
    Serve,
    /// Apply database migrations to the PostgreSQL store and exit.
    Migrate,
    /// Print a signed JWT for calling the service, alone on stdout
    /// (TOKEN=$(user-service token --sub ID --role admin)). Signs with
    /// auth.jwt_secret(_file) or auth.jwt_private_key_file and carries
    /// auth.issuer and auth.audience.
    Token {
        /// The token's subject: the user id it acts as.
        #[arg(long, value_name = "ID")]
        sub: String,
        /// A role (repeatable), e.g. --role admin.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// How long the token is valid, e.g. 15m, 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// The config value for a `--log-format` choice.
fn log_format_key(format: LogFormat) -> String {
    match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
    .to_owned()
}

impl Cli {
    /// Loads settings from every source, the flags given here last.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let flags = [
            ("grpc.addr", &self.grpc_addr),
            ("admin.addr", &self.admin_addr),
            ("store.url", &self.store_url),
            ("log.level", &self.log_level),
            ("log.format", &self.log_format.map(log_format_key)),
        ];
        Settings::load(Sources {
            file: self.config.as_deref(),
            env: None,
            overrides: flags
                .into_iter()
                .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
                .collect(),
        })
    }
}
