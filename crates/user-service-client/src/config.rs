//! How to reach the service: the endpoint, deadlines, retries, the token
//! and the TLS options, all plain data a caller fills in.

use std::{fmt, path::Path, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// How to reach the service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `http://localhost:50051`, or `https://...` for TLS.
    pub endpoint: String,
    pub connect_timeout: Duration,
    /// Deadline of each unary call (sent as `grpc-timeout`).
    pub request_timeout: Duration,
    /// Attempts for idempotent reads that fail with UNAVAILABLE.
    pub read_attempts: u32,
    /// A JWT sent as `authorization: Bearer <token>` on every call (see
    /// `user-service token`). Redacted in `Debug`.
    pub token: Option<Token>,
    /// Whom to trust and who we are. `None` with an `https://` endpoint
    /// trusts the public web PKI roots; `Some` implies TLS even for an
    /// `http://` endpoint.
    pub tls: Option<ClientTls>,
}

/// A bearer token. Its `Debug` never shows the value, so a logged
/// `ClientConfig` does not leak it.
#[derive(Clone)]
pub struct Token(pub(crate) String);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// TLS options of the client, as PEM.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificate(s) to verify the server with, instead of the public
    /// roots (a private CA, such as cert-manager's).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key, for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify in the server's certificate when it differs from
    /// the endpoint's host (e.g. through a port-forward to localhost).
    pub server_name: Option<String>,
}

// The private key stays out of debug output.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("identity_pem", &self.identity_pem.as_ref().map(|_| "<set>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Reads the PEM files: a CA to trust and/or a certificate and key to
    /// present (both or neither).
    pub fn from_files(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Connect(format!("cannot read {}: {e}", path.display())))
        };
        let identity_pem = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(ClientError::Connect(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Self {
            ca_pem: ca_file.map(read).transpose()?,
            identity_pem,
            server_name: None,
        })
    }

    pub(crate) fn to_tonic(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            // Only the given CA: a private deployment should not also trust
            // every public CA.
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_enabled_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://localhost:50051".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            read_attempts: 3,
            token: None,
            tls: None,
        }
    }
}
