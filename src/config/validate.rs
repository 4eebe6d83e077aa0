//! Validation: the rules that span keys or that serde cannot express,
//! applied once every layer is merged (see `load.rs`).

use super::{ConfigError, Settings, TlsSettings};

impl Settings {
    /// Rules that span keys or that serde cannot express.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
}

impl TlsSettings {
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
