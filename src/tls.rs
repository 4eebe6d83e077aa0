//! TLS (and mTLS) on the gRPC port, with certificates that change without a
//! restart.
//!
//! tonic's `ServerTlsConfig` is fixed when the server starts, so the server
//! does its own handshakes instead: [`incoming`] accepts TCP connections
//! (with the same socket options as the plaintext path), runs each
//! handshake in its own task under a timeout, and hands finished streams to
//! `serve_with_incoming_shutdown`. Each handshake uses the `ServerConfig`
//! current at that moment; [`ServerTls::spawn_reloader`] re-reads the files
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

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::{
    rustls::{
        self,
        crypto::CryptoProvider,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::config::TlsSettings;

/// Handshakes in progress at once; past it the server stops accepting until
/// one finishes, so a flood of idle connections cannot exhaust memory.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Bound on reading the three files: a hung volume must not hang reloads.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Where the PEM files are.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The raw bytes of the files, compared to notice a change. Holds the
/// private key, so it deliberately has no `Debug`.
#[derive(PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
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

    /// Re-reads the files every `reload_interval` until `stop` is
    /// cancelled. The server runs it as one of its background tasks.
    pub async fn reload_until(mut self, stop: CancellationToken) {
        {
            let mut ticker = tokio::time::interval(self.reload_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate and the files were just read.
            ticker.tick().await;
            // A broken file is reported once, not on every tick while it
            // stays broken.
            let mut last_warning: Option<String> = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                match self.reload().await {
                    Ok(changed) => {
                        if changed {
                            metrics::counter!("user_service_tls_reloads_total", "result" => "success")
                                .increment(1);
                            tracing::info!(
                                cert_file = %self.files.cert.display(),
                                "TLS files changed: new connections use the new certificate"
                            );
                        }
                        last_warning = None;
                    }
                    Err(err) => {
                        let message = err.to_string();
                        if last_warning.as_deref() != Some(message.as_str()) {
                            metrics::counter!("user_service_tls_reloads_total", "result" => "failure")
                                .increment(1);
                            tracing::warn!(
                                error = %message,
                                "TLS files changed but cannot be used: still serving the previous certificate"
                            );
                            last_warning = Some(message);
                        }
                    }
                }
            }
        }
    }

    /// Swaps in the files' content if it changed and is valid; returns
    /// whether it swapped.
    async fn reload(&mut self) -> Result<bool, TlsError> {
        let material = read(&self.files).await?;
        if material == self.loaded {
            return Ok(false);
        }
        let config = build(&material, &self.files, &self.provider)?;
        self.current.send_replace(config);
        self.loaded = material;
        Ok(true)
    }
}

async fn read(files: &TlsFiles) -> Result<Material, TlsError> {
    async fn one(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
        tokio::fs::read(path)
            .await
            .map_err(|source| TlsError::Read {
                what,
                path: path.to_owned(),
                source,
            })
    }
    let all = async {
        Ok(Material {
            cert: one("tls.cert_file", &files.cert).await?,
            key: one("tls.key_file", &files.key).await?,
            client_ca: match &files.client_ca {
                Some(path) => Some(one("tls.client_ca_file", path).await?),
                None => None,
            },
        })
    };
    tokio::time::timeout(READ_TIMEOUT, all)
        .await
        .map_err(|_| TlsError::Timeout(READ_TIMEOUT))?
}

/// Parses and cross-checks the files into a server config. Error reasons
/// are fixed phrases: parser messages can quote lines of the file.
fn build(
    material: &Material,
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let invalid = |what: &'static str, path: &Path, reason: &str| TlsError::Invalid {
        what,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };

    let chain = pem_certificates(&material.cert)
        .ok_or_else(|| invalid("tls.cert_file", &files.cert, "no PEM CERTIFICATE block"))?;
    let key = PrivateKeyDer::from_pem_slice(&material.key).map_err(|_| {
        invalid(
            "tls.key_file",
            &files.key,
            "no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;

    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|_| invalid("tls.cert_file", &files.cert, "no usable TLS version"))?;
    let builder = match (&files.client_ca, &material.client_ca) {
        (Some(path), Some(pem)) => {
            let cas = pem_certificates(pem)
                .ok_or_else(|| invalid("tls.client_ca_file", path, "no PEM CERTIFICATE block"))?;
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca).map_err(|_| {
                    invalid("tls.client_ca_file", path, "not a valid CA certificate")
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|_| {
                        invalid("tls.client_ca_file", path, "cannot verify clients with it")
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| {
        let reason = match err {
            rustls::Error::InconsistentKeys(_) => "the key does not belong to the certificate",
            _ => "the certificate or the key cannot be used",
        };
        invalid("tls.key_file", &files.key, reason)
    })?;
    // gRPC is HTTP/2 only; clients such as grpc-go refuse a TLS server that
    // does not select h2 by ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Every CERTIFICATE block of a PEM file; `None` if there is none or one is
/// malformed.
fn pem_certificates(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

/// Accepts TCP connections from `tcp` and yields them once their TLS
/// handshake has finished. Failed or slow handshakes are dropped (and
/// logged at debug: scanners and TCP health checks cause them) without
/// affecting anyone else. Dropping the stream, as tonic does when it stops
/// accepting, closes the listener and cancels pending handshakes.
pub fn incoming(tcp: TcpIncoming, tls: TlsHandle) -> TlsIncoming {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(accept_loop(tcp, tls, tx));
    TlsIncoming { rx, task }
}

/// The stream of established TLS connections (see [`incoming`]).
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConnection>,
    task: JoinHandle<()>,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConnection, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|next| next.map(Ok))
    }
}

async fn accept_loop(mut tcp: TcpIncoming, tls: TlsHandle, tx: mpsc::Sender<TlsConnection>) {
    // Handshakes run concurrently so one slow client cannot hold up the
    // others; dropping the set (when this loop ends) cancels them.
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = tcp.next(), if handshakes.len() < MAX_PENDING_HANDSHAKES => match accepted {
                Some(Ok(stream)) => {
                    let acceptor = TlsAcceptor::from(Arc::clone(&tls.config.borrow()));
                    let timeout = tls.handshake_timeout;
                    let tx = tx.clone();
                    handshakes.spawn(async move {
                        if let Some(connection) = handshake(acceptor, stream, timeout).await {
                            let _ = tx.send(connection).await;
                        }
                    });
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "cannot accept a gRPC connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                None => return,
            }
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<TlsConnection> {
    let info = stream.connect_info();
    let peer = info.remote_addr;
    let result = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            metrics::counter!("user_service_tls_handshakes_total", "result" => "success")
                .increment(1);
            return Some(TlsConnection { stream, info });
        }
        Ok(Err(err)) => ("failure", err.to_string()),
        Err(_) => ("timeout", format!("not finished within {timeout:?}")),
    };
    metrics::counter!("user_service_tls_handshakes_total", "result" => result.0).increment(1);
    tracing::debug!(peer = ?peer, error = %result.1, "TLS handshake failed");
    None
}

/// An established TLS connection. It reports tonic's [`TcpConnectInfo`]
/// (not `TlsConnectInfo`), so the request extension carrying the peer
/// address is the same as without TLS.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            cert_file: Some(dir.join("tls.crt")),
            key_file: Some(dir.join("tls.key")),
            ..TlsSettings::default()
        }
    }

    fn write(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    #[tokio::test]
    async fn errors_name_the_file_but_never_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
        write(dir.path(), &cert, secret);
        let error = match ServerTls::load(&settings(dir.path())).await {
            Ok(_) => panic!("a garbage key was accepted"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("tls.key_file"), "{error}");
        assert!(error.contains("tls.key"), "{error}");
        assert!(
            !error.contains("c2VjcmV0") && !error.contains("BEGIN"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn reload_swaps_valid_files_and_keeps_the_old_config_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        write(dir.path(), &cert, &key);
        let mut tls = ServerTls::load(&settings(dir.path()))
            .await
            .unwrap()
            .unwrap();
        let handle = tls.handle();
        let first = Arc::clone(&handle.config.borrow());
        assert!(!tls.reload().await.unwrap(), "unchanged files reloaded");

        // A certificate whose key is the old one: refused, old one kept.
        let (other_cert, other_key) = self_signed();
        write(dir.path(), &other_cert, &key);
        assert!(tls.reload().await.is_err());
        assert!(Arc::ptr_eq(&first, &handle.config.borrow()));
        // A truncated file: the same.
        write(dir.path(), &other_cert[..40], &other_key);
        assert!(tls.reload().await.is_err());
        assert!(Arc::ptr_eq(&first, &handle.config.borrow()));
        // The pair complete: swapped, for the next handshake.
        write(dir.path(), &other_cert, &other_key);
        assert!(tls.reload().await.unwrap());
        assert!(!Arc::ptr_eq(&first, &handle.config.borrow()));
        assert_eq!(handle.config.borrow().alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[tokio::test]
    async fn accepted_connections_report_the_peer_as_tcp_connect_info() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        write(dir.path(), &cert, &key);
        let tls = ServerTls::load(&settings(dir.path()))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(TcpIncoming::from(listener), tls.handle());

        // A client that fails its handshake first: the loop goes on.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
            .unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client_addr = tcp.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (connected, accepted) = tokio::join!(connector.connect(name, tcp), async {
            tokio::time::timeout(Duration::from_secs(10), incoming.next()).await
        });
        let connected = connected.unwrap();
        assert_eq!(connected.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let accepted = accepted.unwrap().unwrap().unwrap();
        let info = accepted.connect_info();
        assert_eq!(info.remote_addr(), Some(client_addr));
        assert_eq!(info.local_addr(), Some(addr));
    }
}
