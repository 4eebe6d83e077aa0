//! Reading the PEM files and turning them into a `ServerConfig`: every
//! check on their content, at startup and on each reload.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio_rustls::rustls::{
    self,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};

use super::TlsError;

/// Bound on reading the three files: a hung volume must not hang reloads.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub(super) struct TlsFiles {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) client_ca: Option<PathBuf>,
}

/// The raw bytes of the files, compared to notice a change. Holds the
/// private key, so it deliberately has no `Debug`.
#[derive(PartialEq, Eq)]
pub(super) struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

pub(super) async fn read(files: &TlsFiles) -> Result<Material, TlsError> {
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
pub(super) fn build(
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

#[cfg(test)]
mod tests {
    use super::super::{
        test_support::{self_signed, settings, write},
        ServerTls,
    };

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
}
