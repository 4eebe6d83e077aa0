//! TLS and mTLS on the gRPC port: round trips with the client library and
//! userctl, refused clients, certificates rotated on disk, and garbage on
//! the TLS port. Certificates are generated per test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
use user_service::{config::Settings, server::Server};
use user_service_client::{ClientConfig, ClientError, ClientTls, UserClient};

use crate::helpers::{
    email, http_get, metric_value, start_child, test_settings, ChildApp, TestServer,
};

/// A private CA, like the one behind a cert-manager Issuer.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for localhost and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.leaf(
            vec!["client.example.com".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The mounted Secret: tls.crt, tls.key and ca.crt in one directory.
struct TlsDir {
    dir: tempfile::TempDir,
}

impl TlsDir {
    fn new(server: &Leaf, client_ca: Option<&Ca>) -> Self {
        let dir = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        dir.write(server, client_ca);
        dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the files the way a Secret volume does: each appears whole
    /// (written aside, then renamed over the old one).
    fn write(&self, server: &Leaf, client_ca: Option<&Ca>) {
        self.replace("tls.crt", &server.cert);
        self.replace("tls.key", &server.key);
        if let Some(ca) = client_ca {
            self.replace("ca.crt", &ca.pem());
        }
    }

    fn replace(&self, name: &str, content: &str) {
        let aside = self.path(&format!(".{name}.new"));
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, self.path(name)).unwrap();
    }

    fn settings(&self, mutual: bool) -> Settings {
        let mut settings = test_settings();
        settings.tls.cert_file = Some(self.path("tls.crt"));
        settings.tls.key_file = Some(self.path("tls.key"));
        if mutual {
            settings.tls.client_ca_file = Some(self.path("ca.crt"));
        }
        settings.tls.reload_interval = Duration::from_millis(100);
        settings
    }
}

/// `https://localhost:<port>` of a server: the name its certificate has.
fn endpoint(app: &TestServer) -> String {
    format!("https://localhost:{}", app.grpc_addr.port())
}

/// A client library connection to `app` over TLS.
async fn connect_tls(app: &TestServer, tls: ClientTls) -> Result<UserClient, ClientError> {
    UserClient::connect(ClientConfig {
        endpoint: endpoint(app),
        connect_timeout: Duration::from_secs(5),
        read_attempts: 1,
        tls: Some(tls),
        ..ClientConfig::default()
    })
    .await
}

fn trusting(ca: &Ca) -> ClientTls {
    ClientTls {
        ca_pem: Some(ca.pem().into_bytes()),
        ..ClientTls::default()
    }
}

fn presenting(ca: &Ca, me: &Leaf) -> ClientTls {
    ClientTls {
        identity_pem: Some((me.cert.clone().into_bytes(), me.key.clone().into_bytes())),
        ..trusting(ca)
    }
}

/// Creates a user and reads it back: a full round trip.
async fn round_trip(client: &UserClient) -> Result<(), ClientError> {
    let user = client
        .create_user(&email("tls"), "Tls User", "correct horse battery")
        .await?;
    assert_eq!(client.get_user(&user.id).await?, user);
    Ok(())
}

async fn health(app: &TestServer, ca: &Ca, service: &str) -> ServingStatus {
    let channel = Channel::from_shared(endpoint(app))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("TLS channel");
    let response = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check");
    response.into_inner().status()
}

/// The server refused this client: at connect, or (TLS 1.3 finishes the
/// client's side of the handshake before the server has checked its
/// certificate) on its first call, which then never reaches a handler.
/// Returns the client's error message, which should say why.
async fn assert_refused(connected: Result<UserClient, ClientError>) -> String {
    match connected {
        Err(ClientError::Connect(why)) => why,
        Ok(client) => match client.get_user(&uuid::Uuid::now_v7().to_string()).await {
            Err(ClientError::Unavailable(why)) => why,
            other => panic!("a client the server should refuse got {other:?}"),
        },
        Err(other) => panic!("unexpected error: {other:?}"),
    }
}

/// Whether a new mTLS connection, trusting `ca` and presenting a client
/// certificate from it, gets a full round trip.
async fn serves(app: &TestServer, ca: &Ca) -> bool {
    match connect_tls(app, presenting(ca, &ca.client())).await {
        Ok(client) => round_trip(&client).await.is_ok(),
        Err(_) => false,
    }
}

/// Failed reloads the server has counted (each distinct failure once).
async fn reload_failures(app: &TestServer) -> f64 {
    let (_, body) = http_get(app.admin_addr, "/metrics").await;
    metric_value(&body, r#"user_service_tls_reloads_total{result="failure""#).unwrap_or(0.0)
}

/// Replaces the mounted file `name` with `content`, which the server must
/// refuse; waits until its reloader has refused it (the failure counter
/// grows: the counter is process-wide, and this module's rotation test is
/// the only in-process server whose files change), then checks that a new
/// connection still gets the last good certificate, from `ca`.
async fn swap_refused(app: &TestServer, files: &TlsDir, name: &str, content: &str, ca: &Ca) {
    let before = reload_failures(app).await;
    files.replace(name, content);
    let refused = eventually(Duration::from_secs(10), || async {
        reload_failures(app).await > before
    })
    .await;
    assert!(refused, "the reloader never looked at the new {name}");
    let client = connect_tls(app, presenting(ca, &ca.client()))
        .await
        .expect("still serving the last good certificate");
    round_trip(&client).await.unwrap();
}

/// Retries `attempt` until it succeeds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn tls_round_trip_with_the_client_library_health_and_userctl() {
    let ca = Ca::new("test CA");
    let files = TlsDir::new(&ca.server(), None);
    let app = TestServer::start(files.settings(false)).await;

    let client = connect_tls(&app, trusting(&ca)).await.expect("TLS connect");
    round_trip(&client).await.unwrap();
    assert_eq!(health(&app, &ca, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&app, &ca, "user.v1.UserService").await,
        ServingStatus::Serving
    );

    // A client that does not trust the server's CA refuses the server.
    let stranger = Ca::new("another CA");
    assert!(matches!(
        connect_tls(&app, trusting(&stranger)).await,
        Err(ClientError::Connect(_))
    ));

    // userctl: --ca-file turns TLS on, even with an http:// address.
    let ca_file = files.path("ca-for-userctl.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let addr = format!("http://localhost:{}", app.grpc_addr.port());
    let (ok, out, err) = userctl(
        &addr,
        &[
            "--ca-file",
            ca_file.to_str().unwrap(),
            "create",
            "--email",
            &email("ctl-tls"),
            "--name",
            "Ctl",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("USER_STATUS_ACTIVE"), "{out}");
    // Without the CA, the same call fails and says why.
    let (ok, _, err) = userctl(
        &format!("https://localhost:{}", app.grpc_addr.port()),
        &["list"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");

    app.stop().await;
}

#[tokio::test]
async fn mtls_admits_clients_with_a_certificate_from_the_ca_only() {
    let ca = Ca::new("test CA");
    let files = TlsDir::new(&ca.server(), Some(&ca));
    let app = TestServer::start(files.settings(true)).await;

    let good = connect_tls(&app, presenting(&ca, &ca.client()))
        .await
        .expect("mTLS connect");
    round_trip(&good).await.unwrap();

    // No client certificate: refused at the handshake. With TLS 1.3 the
    // client learns it at connect or at its first call.
    let why = assert_refused(connect_tls(&app, trusting(&ca)).await).await;
    assert!(why.contains("alert"), "refused by the TLS layer: {why}");
    // A certificate from another CA: refused too.
    let stranger = Ca::new("another CA");
    let why = assert_refused(connect_tls(&app, presenting(&ca, &stranger.client())).await).await;
    assert!(why.contains("alert"), "refused by the TLS layer: {why}");

    // The server kept serving: the open connection and a new one both work.
    round_trip(&good).await.unwrap();
    let again = connect_tls(&app, presenting(&ca, &ca.client()))
        .await
        .expect("mTLS reconnect");
    round_trip(&again).await.unwrap();

    // userctl with --cert/--key.
    let client = ca.client();
    std::fs::write(files.path("client.crt"), &client.cert).unwrap();
    std::fs::write(files.path("client.key"), &client.key).unwrap();
    let path = |name: &str| files.path(name).to_str().unwrap().to_owned();
    let (ok, _, err) = userctl(
        &endpoint(&app),
        &[
            "--ca-file",
            &path("ca.crt"),
            "--cert",
            &path("client.crt"),
            "--key",
            &path("client.key"),
            "list",
        ],
    )
    .await;
    assert!(ok, "{err}");

    app.stop().await;
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let old_ca = Ca::new("old CA");
    let files = TlsDir::new(&old_ca.server(), Some(&old_ca));
    let app = TestServer::start(files.settings(true)).await;
    let old_client = connect_tls(&app, presenting(&old_ca, &old_ca.client()))
        .await
        .expect("connect with the old CA");
    round_trip(&old_client).await.unwrap();

    // cert-manager rotates: a new CA, a new server certificate, a new key.
    let new_ca = Ca::new("new CA");
    files.write(&new_ca.server(), Some(&new_ca));
    let picked_up = eventually(Duration::from_secs(10), || serves(&app, &new_ca)).await;
    assert!(picked_up, "the new certificate was never served");

    // New connections no longer get the old certificate...
    assert!(
        !serves(&app, &old_ca).await,
        "a client trusting only the old CA still connects"
    );
    // ...while the connection opened before the rotation keeps working.
    round_trip(&old_client).await.unwrap();

    // A broken new certificate is not taken: the previous one stays.
    swap_refused(
        &app,
        &files,
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
        &new_ca,
    )
    .await;
    // So is a key that does not belong to the certificate.
    swap_refused(&app, &files, "tls.crt", &new_ca.server().cert, &new_ca).await;

    app.stop().await;
}

#[tokio::test]
async fn garbage_on_the_tls_port_does_not_stop_the_server() {
    let ca = Ca::new("test CA");
    let files = TlsDir::new(&ca.server(), None);
    let mut settings = files.settings(false);
    settings.tls.handshake_timeout = Duration::from_millis(500);
    let app = TestServer::start(settings).await;

    // A client that connects and never says anything: its handshake waits
    // in its own task, the others go ahead meanwhile.
    let mut silent = TcpStream::connect(app.grpc_addr).await.unwrap();

    // Plaintext HTTP/2 (a client that forgot TLS): the handshake fails.
    let mut plain = TcpStream::connect(app.grpc_addr).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    // Nothing, or a TLS alert record: never HTTP/2 frames.
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "a plaintext HTTP/2 client got {answer:?} from the TLS port"
    );
    // A plaintext gRPC client: refused, not served.
    let plaintext = UserClient::connect(ClientConfig {
        endpoint: format!("http://{}", app.grpc_addr),
        connect_timeout: Duration::from_secs(2),
        read_attempts: 1,
        ..ClientConfig::default()
    })
    .await;
    if let Ok(plaintext) = plaintext {
        assert!(plaintext
            .get_user(&uuid::Uuid::now_v7().to_string())
            .await
            .is_err());
    }
    // Random bytes.
    let mut noise = TcpStream::connect(app.grpc_addr).await.unwrap();
    noise
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    drop(noise);

    let client = connect_tls(&app, trusting(&ca)).await.expect("TLS connect");
    round_trip(&client).await.unwrap();

    // The silent client is disconnected once the handshake timeout passes.
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a client that never finished its handshake was kept: {closed:?}"
    );

    round_trip(&client).await.unwrap();
    app.stop().await;
}

#[test]
fn a_certificate_without_a_key_is_a_configuration_error() {
    for (set, missing) in [
        ("USER_SERVICE__TLS__CERT_FILE", "tls.key_file"),
        ("USER_SERVICE__TLS__KEY_FILE", "tls.cert_file"),
    ] {
        let output = binary()
            .env(set, "/etc/user-service/tls/file.pem")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(missing), "{stderr}");
    }
    let output = binary()
        .env("USER_SERVICE__TLS__CLIENT_CA_FILE", "/etc/ca.crt")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[tokio::test]
async fn unusable_files_at_startup_stop_the_server_naming_the_file() {
    let ca = Ca::new("test CA");
    let files = TlsDir::new(&ca.server(), None);
    // The key of another certificate.
    files.replace("tls.key", &ca.server().key);
    let error = match Server::bind(files.settings(false)).await {
        Ok(_) => panic!("started with a key that does not match"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("tls.key_file"), "{error}");
    assert!(error.contains("does not belong"), "{error}");
    assert!(!error.contains("PRIVATE KEY"), "{error}");

    let mut settings = files.settings(false);
    settings.tls.cert_file = Some(Path::new("/nonexistent/tls.crt").to_owned());
    let error = match Server::bind(settings).await {
        Ok(_) => panic!("started without a certificate file"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("/nonexistent/tls.crt"), "{error}");
}

fn binary() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_user-service"));
    for (key, _) in std::env::vars() {
        if key.starts_with("USER_SERVICE__") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

async fn userctl(addr: &str, args: &[&str]) -> (bool, String, String) {
    let child = Command::new(crate::helpers::userctl())
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env("USERCTL_PASSWORD", "correct horse battery")
        .env_remove("USERCTL_CA_FILE")
        .env_remove("USERCTL_CERT")
        .env_remove("USERCTL_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a Go tool the test command installs (scripts/install-test-deps.sh).
async fn go_tool(tool: &str, args: &[&str]) -> (bool, String) {
    let output = match Command::new(tool).args(args).output().await {
        Ok(output) => output,
        Err(err) => {
            panic!("cannot run {tool} ({err}); run the suite with `make test`, which installs it")
        }
    };
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn grpcurl_and_grpc_health_probe_speak_mtls_to_the_server() {
    let ca = Ca::new("test CA");
    let files = TlsDir::new(&ca.server(), Some(&ca));
    let app = TestServer::start(files.settings(true)).await;
    let client = ca.client();
    std::fs::write(files.path("client.crt"), &client.cert).unwrap();
    std::fs::write(files.path("client.key"), &client.key).unwrap();
    let path = |name: &str| files.path(name).to_str().unwrap().to_owned();
    let addr = format!("localhost:{}", app.grpc_addr.port());

    // As in the README: -plaintext becomes -cacert (and -cert/-key for mTLS).
    let (ok, out) = go_tool(
        "grpcurl",
        &[
            "-cacert",
            &path("ca.crt"),
            "-cert",
            &path("client.crt"),
            "-key",
            &path("client.key"),
            &addr,
            "list",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("user.v1.UserService"), "{out}");
    // Without a client certificate: refused.
    let (ok, out) = go_tool(
        "grpcurl",
        &[
            "-connect-timeout",
            "3",
            "-cacert",
            &path("ca.crt"),
            &addr,
            "list",
        ],
    )
    .await;
    assert!(!ok, "grpcurl without a certificate got: {out}");

    // As the chart's `helm test` pod runs it.
    let (ok, out) = go_tool(
        "grpc-health-probe",
        &[
            &format!("-addr={addr}"),
            "-service=user.v1.UserService",
            "-tls",
            &format!("-tls-ca-cert={}", path("ca.crt")),
            &format!("-tls-client-cert={}", path("client.crt")),
            &format!("-tls-client-key={}", path("client.key")),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("SERVING"), "{out}");

    app.stop().await;
}

/// The real binary with TLS from the environment, as the chart runs it:
/// its JSON log shows TLS on, the peer address of each call, and one WARN
/// without key material when a broken key is written.
#[tokio::test]
async fn the_binary_logs_peers_under_tls_and_warns_about_broken_files_without_quoting_them() {
    let ca = Ca::new("test CA");
    let files = TlsDir::new(&ca.server(), Some(&ca));
    let path = |name: &str| files.path(name).display().to_string();
    let mut child = start_child(&[
        ("USER_SERVICE__LOG__LEVEL", "info"),
        ("USER_SERVICE__TLS__CERT_FILE", &path("tls.crt")),
        ("USER_SERVICE__TLS__KEY_FILE", &path("tls.key")),
        ("USER_SERVICE__TLS__CLIENT_CA_FILE", &path("ca.crt")),
        ("USER_SERVICE__TLS__RELOAD_INTERVAL", "100ms"),
        ("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "100ms"),
    ])
    .await;
    // Every line of the log is JSON.
    let lines = |child: &ChildApp| -> Vec<serde_json::Value> {
        child
            .log_lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    };
    let serving = lines(&child)
        .into_iter()
        .find(|l| l["message"] == "serving")
        .expect("a `serving` line");
    assert_eq!(serving["tls"], "mutual", "{serving}");
    let grpc_addr = child.grpc_addr;

    let client = UserClient::connect(ClientConfig {
        endpoint: format!("https://localhost:{}", grpc_addr.port()),
        tls: Some(presenting(&ca, &ca.client())),
        ..ClientConfig::default()
    })
    .await
    .expect("mTLS connect");
    round_trip(&client).await.unwrap();

    // A key file that is not a key; its content must not reach the log.
    files.replace(
        "tls.key",
        "-----BEGIN PRIVATE KEY-----\nU0VDUkVUTUFSS0VS\n-----END PRIVATE KEY-----\n",
    );
    let warned = eventually(Duration::from_secs(5), || async {
        lines(&child)
            .iter()
            .any(|l| l["level"] == "WARN" && l["target"] == "user_service::tls")
    })
    .await;
    assert!(warned, "no WARN about the broken key");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Still serving, with the previous certificate.
    round_trip(&client).await.unwrap();
    let again = UserClient::connect(ClientConfig {
        endpoint: format!("https://localhost:{}", grpc_addr.port()),
        tls: Some(presenting(&ca, &ca.client())),
        ..ClientConfig::default()
    })
    .await
    .expect("reconnect after a broken key");
    round_trip(&again).await.unwrap();

    let exit = child.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");

    let lines = lines(&child);
    // (Auth being off warns too, at startup: only the TLS warnings count.)
    let warnings: Vec<_> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["target"] == "user_service::tls")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one WARN while the key stays broken: {warnings:?}"
    );
    let warning = warnings[0].to_string();
    assert!(warning.contains("tls.key_file"), "{warning}");
    let everything = lines.iter().map(|l| l.to_string()).collect::<String>();
    assert!(
        !everything.contains("U0VDUkVUTUFSS0VS") && !everything.contains("PRIVATE KEY"),
        "key material in the log"
    );
    // The call log line still names the peer under TLS.
    let finished = lines
        .iter()
        .find(|l| l["message"] == "finished call" && l["grpc.method"] == "CreateUser")
        .expect("a finished call line");
    assert!(
        finished["peer.address"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{finished}"
    );
}
