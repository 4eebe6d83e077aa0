//! Accepting: each TCP connection's handshake in its own task under a
//! timeout, counted by result, and the established connection wrapped so
//! it reports the same peer information as the plaintext path.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use super::{TlsHandle, LOG_TARGET};

/// Handshakes in progress at once; past it the server stops accepting until
/// one finishes, so a flood of idle connections cannot exhaust memory.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
                    tracing::warn!(target: LOG_TARGET, error = %err, "cannot accept a gRPC connection");
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
    tracing::debug!(target: LOG_TARGET, peer = ?peer, error = %result.1, "TLS handshake failed");
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
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer},
        RootCertStore,
    };

    use super::super::{
        test_support::{self_signed, settings, write},
        ServerTls,
    };
    use super::*;

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
