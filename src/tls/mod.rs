//! TLS (and mTLS) on the gRPC port, with certificates that change without a
//! restart.
//!
//! tonic's `ServerTlsConfig` is fixed when the server starts, so the server
//! does its own handshakes instead: [`incoming`] accepts TCP connections
//! (with the same socket options as the plaintext path), runs each
//! handshake in its own task under a timeout, and hands finished streams to
//! `serve_with_incoming_shutdown`. Each handshake uses the `ServerConfig`
//! current at that moment; [`ServerTls::reload_until`] re-reads the files
//! on an interval and swaps in a new config when their content changed and
//! is valid. Open connections keep the config they were accepted with.
//!
//! A whole new `ServerConfig` is built on every change (rather than only
//! swapping a certificate resolver) so certificate, key and client CA are
//! validated together and a new client CA gets a new verifier through the
//! same path.
//!
//! Peer addresses: the accepted stream reports tonic's own
//! [`TcpConnectInfo`], the same request extension as on the plaintext
//! path, so layers read the peer the same way with or without TLS.
//!
//! What lives where: `files.rs` reads and validates the PEM files into a
//! `ServerConfig`; `reload.rs` re-reads them on an interval and swaps the
//! config; `accept.rs` runs the handshakes (and counts them) and wraps the
//! established connections. Nothing here knows the gRPC services or the
//! layers: it yields connections, tonic serves them.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_rustls::rustls::{self, crypto::CryptoProvider, ServerConfig};

use crate::config::TlsSettings;

mod accept;
mod files;
mod reload;

pub use accept::{incoming, TlsConnection, TlsIncoming};

/// The `target` of this module's log lines: the module path they had
/// before the module was split into files, so log filters
/// (`user_service::tls=debug`) and the logs' `target` field stay as they
/// were. Every `tracing` macro under `tls/` names it.
const LOG_TARGET: &str = "user_service::tls";
use files::{build, read, Material, TlsFiles};

/// Why the TLS files cannot be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {}: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("reading the TLS files took longer than {0:?}")]
    Timeout(Duration),
}

/// TLS for the gRPC port: the current `ServerConfig` and what is needed to
/// reload it.
pub struct ServerTls {
    files: TlsFiles,
    reload_interval: Duration,
    handshake_timeout: Duration,
    provider: Arc<CryptoProvider>,
    current: watch::Sender<Arc<ServerConfig>>,
    loaded: Material,
}

/// What the accept loop needs: the config to use for the next handshake.
#[derive(Clone)]
pub struct TlsHandle {
    config: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
}

impl ServerTls {
    /// Reads and checks the files named in `settings`; `None` when TLS is
    /// off. A problem here stops startup: there is no previous certificate
    /// to fall back to.
    pub async fn load(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: settings.client_ca_file.clone(),
        };
        // The provider the rest of the tree (sqlx, tonic's client) already
        // compiles in; passed explicitly so no process-wide default is
        // needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = read(&files).await?;
        let config = build(&loaded, &files, &provider)?;
        let (current, _) = watch::channel(config);
        Ok(Some(Self {
            files,
            reload_interval: settings.reload_interval,
            handshake_timeout: settings.handshake_timeout,
            provider,
            current,
            loaded,
        }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    pub fn handle(&self) -> TlsHandle {
        TlsHandle {
            config: self.current.subscribe(),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// Certificates and settings for the tests of the submodules.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use crate::config::TlsSettings;

    pub(super) fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(super) fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            cert_file: Some(dir.join("tls.crt")),
            key_file: Some(dir.join("tls.key")),
            ..TlsSettings::default()
        }
    }

    pub(super) fn write(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }
}
