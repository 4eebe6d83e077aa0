//! Starting servers and talking to them.

#![allow(dead_code)] // each test module uses a different subset

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;
use user_service::{
    config::Settings, domain::UserStore, pb::user_service_client::UserServiceClient,
    server::Server, store::MemoryStore,
};

/// A server running in this process, stopped when dropped.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub client: UserServiceClient<Channel>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The `userctl` binary, built from this checkout. It belongs to the client
/// crate (`crates/user-service-client`), so cargo does not build it for
/// this package's tests nor hand them its path: the first caller runs
/// `cargo build` for it (a no-op when it is fresh) into this test binary's
/// target directory, so `cargo test --test it` never runs a stale one.
pub fn userctl() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            // target/<profile>/deps/it-<hash>
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("test binary lives in target/<profile>/deps");
            let target_dir = profile_dir.parent().expect("target directory");
            let mut build = std::process::Command::new(env!("CARGO"));
            build
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "user-service-client",
                    "--bin",
                    "userctl",
                ])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build for userctl");
            assert!(
                status.success(),
                "cargo build -p user-service-client failed"
            );
            profile_dir.join(format!("userctl{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

/// Settings for tests: loopback, ephemeral ports, a short drain, cheap
/// enough defaults for a 2-core machine.
pub fn test_settings() -> Settings {
    let mut s = Settings::default();
    s.grpc.addr = "127.0.0.1:0".parse().unwrap();
    s.admin.addr = "127.0.0.1:0".parse().unwrap();
    s.shutdown.drain_delay = Duration::from_millis(100);
    s.shutdown.timeout = Duration::from_secs(5);
    s.health.check_interval = Duration::from_millis(100);
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let server = Server::bind(settings).await.expect("bind");
    start(server).await
}

/// Starts a server on a store the caller owns (e.g. shared by two servers).
pub async fn spawn_app_on(settings: Settings, store: Arc<dyn UserStore>) -> TestApp {
    let server = Server::bind_with_store(settings, store)
        .await
        .expect("bind");
    start(server).await
}

pub fn memory_store() -> Arc<dyn UserStore> {
    Arc::new(MemoryStore::new(1024))
}

async fn start(server: Server) -> TestApp {
    let grpc_addr = server.grpc_addr();
    let admin_addr = server.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .expect("server run");
    });
    let channel = connect(grpc_addr).await;
    let app = TestApp {
        grpc_addr,
        admin_addr,
        client: UserServiceClient::new(channel.clone()),
        channel,
        shutdown: Some(tx),
        task: Some(task),
    };
    app.wait_ready().await;
    app
}

pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect")
}

impl TestApp {
    /// Creates the user [`create_request`]`(tag)` describes; panics on
    /// failure (use `client.create_user` to test failures).
    pub async fn create_user(&self, tag: &str) -> user_service::pb::User {
        self.client
            .clone()
            .create_user(create_request(tag))
            .await
            .unwrap_or_else(|status| panic!("create {tag}: {status:?}"))
            .into_inner()
    }

    /// Reads a user back.
    pub async fn get_user(&self, id: &str) -> Result<user_service::pb::User, tonic::Status> {
        let request = user_service::pb::GetUserRequest {
            user_id: id.to_owned(),
        };
        Ok(self.client.clone().get_user(request).await?.into_inner())
    }

    /// Waits until `/readyz` says ready (the first store check passed).
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if http_get(self.admin_addr, "/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server at {} never became ready", self.grpc_addr);
    }

    /// Starts the shutdown sequence and returns the server task.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("already shut down")
    }

    /// Shuts down and waits for the sequence to finish.
    pub async fn stop(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown timed out")
            .expect("server task");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal HTTP/1.1 GET (no client library needed for probes and
/// Prometheus queries): returns (status, body).
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Some((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Some(answer)) => answer,
        _ => (0, String::new()),
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A loopback address that was free a moment ago, for a child process to
/// bind (it cannot take port 0 and report back as easily as in-process).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A unique, valid email for tests that create users.
pub fn email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::now_v7().simple())
}

pub fn create_request(tag: &str) -> user_service::pb::CreateUserRequest {
    user_service::pb::CreateUserRequest {
        email: email(tag),
        name: format!("User {tag}"),
        password: "correct horse battery".into(),
    }
}

/// Field names in the `google.rpc.BadRequest` detail of a status.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The real binary as a child process (for signals, exit codes and its own
/// memory figures), on free loopback ports and the memory store unless
/// `env` says otherwise. Killed when dropped.
pub struct ChildApp {
    pub child: std::process::Child,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Starts the binary with `env` (`USER_SERVICE__...` pairs) and waits until
/// `/readyz` says ready.
pub async fn spawn_child(env: &[(&str, &str)]) -> ChildApp {
    let (grpc_addr, admin_addr) = (free_addr(), free_addr());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_user-service"));
    command
        .args([
            "--grpc-addr",
            &grpc_addr.to_string(),
            "--admin-addr",
            &admin_addr.to_string(),
        ])
        .env_remove("USER_SERVICE__STORE__URL")
        .env("USER_SERVICE__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("spawn the binary");
    let app = ChildApp {
        child,
        grpc_addr,
        admin_addr,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http_get(admin_addr, "/readyz").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the binary never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

impl ChildApp {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`-TERM`, `-INT`, `-STOP`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }

    /// The exit status once the process has exited, or `None` after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                return Some(exit);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in KiB (VmRSS in /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// One sample of a metric (exact name and label set, as rendered).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(self.admin_addr, "/metrics").await;
        metric_value(&body, series)
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in KiB (0 when unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The sum of the samples of `series` in a Prometheus text body: a bare
/// name, or a name with a label subset like `x{grpc_method="GetUser"`
/// (without the closing brace) matched as a prefix per label.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (line_name, line_labels) = match head.split_once('{') {
            Some((n, l)) => (n, l),
            None => (head, ""),
        };
        if line_name != name || !wanted.iter().all(|w| line_labels.contains(w)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A `store.seed_file` of `n` users sharing one precomputed PHC hash
/// (loading 100k users costs no hashing); returns the file and the ids in
/// order.
pub fn seed_file(n: usize) -> (tempfile::NamedTempFile, Vec<String>) {
    use std::io::Write;
    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let mut out = std::io::BufWriter::new(file.as_file());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        writeln!(
            out,
            r#"{{"id":"{id}","email":"seed{i}@example.com","name":"Seeded user {i:06}","password_hash":"{HASH}"}}"#
        )
        .expect("write seed file");
        ids.push(id);
    }
    out.flush().expect("flush seed file");
    drop(out);
    (file, ids)
}

/// A channel with small HTTP/2 windows: the server can get only `window`
/// bytes ahead of what this client has read, as with a slow reader.
pub async fn connect_small_window(addr: SocketAddr, window: u32) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(window))
        .initial_connection_window_size(Some(window))
        .connect()
        .await
        .expect("connect")
}

/// A user ready for a store's `create`, with a stand-in password hash (a
/// well-formed argon2id PHC string: hashing for real would only slow the
/// tests down).
pub fn new_user(email: &str, name: &str) -> user_service::domain::NewUser {
    use user_service::domain::{now, Email, NewUser, UserId, UserName, UserStatus};
    NewUser {
        id: UserId::generate(),
        email: Email::parse(email).unwrap(),
        name: UserName::parse(name).unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        status: UserStatus::Active,
        roles: vec![],
        created_at: now(),
    }
}
