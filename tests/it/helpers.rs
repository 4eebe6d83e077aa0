//! Starting servers and talking to them.

#![allow(dead_code)] // each test module uses a different subset

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use user_service::{
    config::Settings, domain::UserStore, pb::user_service_client::UserServiceClient,
    server::Server, store::MemoryStore,
};

/// A server running in this process, stopped when dropped. Nobody is
/// connected to it yet: the caller connects the way the test needs
/// (plaintext through [`TestServer::connect`], TLS in `tls.rs`).
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A [`TestServer`] with a plaintext client connected to it, the way most
/// tests use the server. Derefs to the server (addresses, shutdown).
pub struct TestApp {
    pub client: UserServiceClient<Channel>,
    pub channel: Channel,
    server: TestServer,
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
    TestServer::start(settings).await.connect().await
}

/// Starts a server on a store the caller owns (e.g. shared by two servers).
pub async fn spawn_app_on(settings: Settings, store: Arc<dyn UserStore>) -> TestApp {
    TestServer::start_on(settings, store).await.connect().await
}

pub fn memory_store() -> Arc<dyn UserStore> {
    Arc::new(MemoryStore::new(1024))
}

impl TestServer {
    /// Binds `settings` (port 0 in [`test_settings`]: the addresses are
    /// the ones the listeners got), runs the server and waits until
    /// `/readyz` says ready. The admin port is plaintext whatever the gRPC
    /// port speaks, so this works for TLS servers too.
    pub async fn start(settings: Settings) -> Self {
        Self::run(Server::bind(settings).await.expect("bind")).await
    }

    /// Like [`TestServer::start`], on a store the caller owns.
    pub async fn start_on(settings: Settings, store: Arc<dyn UserStore>) -> Self {
        let server = Server::bind_with_store(settings, store)
            .await
            .expect("bind");
        Self::run(server).await
    }

    async fn run(server: Server) -> Self {
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
        let server = Self {
            grpc_addr,
            admin_addr,
            shutdown: Some(tx),
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    /// Connects a plaintext client.
    pub async fn connect(self) -> TestApp {
        let channel = connect(self.grpc_addr).await;
        TestApp {
            client: UserServiceClient::new(channel.clone()),
            channel,
            server: self,
        }
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

    /// Shuts down and waits for the sequence (background tasks included)
    /// to finish.
    pub async fn stop(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown timed out")
            .expect("server task");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl std::ops::Deref for TestApp {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut TestServer {
        &mut self.server
    }
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

    /// Shuts down and waits for the sequence to finish.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// GET `http://{addr}{path_and_query}`: returns (status, body), or
/// `(0, "")` when there is no answer within 10 s (nothing listening yet,
/// a reset), so callers can poll.
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    let url = format!("http://{addr}{path_and_query}");
    let answer = async {
        let response = http_client().get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    };
    answer.await.unwrap_or_default()
}

/// One client for every test. It keeps no idle connections: each test has
/// a runtime of its own, and a pooled connection would belong to the
/// runtime of the test that opened it.
fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        // reqwest is built without a bundled crypto provider (as for the
        // service's JWKS client); these requests are plaintext, but building
        // a client needs one. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("build the HTTP client")
    })
}

/// A loopback address nothing listens on, for a test that needs a peer
/// that is not there (an unreachable collector or database). The port is
/// bound but never listened on, so connections to it are refused and no
/// other test or process can take it while this value lives: keep it
/// alive as long as the address is in use.
pub struct UnusedAddr {
    _reserved: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

pub fn unused_addr() -> UnusedAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local address");
    UnusedAddr {
        _reserved: socket,
        addr,
    }
}

/// A loopback port that was free a moment ago, for a child process that
/// must be told its port number and cannot report one it chose itself
/// (the PostgreSQL postmaster of `pg::OwnCluster`, which also restarts on
/// the same port). Racy by nature: another process may take it first, so
/// the caller must retry with a new one when the child cannot bind it.
/// Servers of this project bind port 0 instead ([`spawn_child`]).
pub fn unreserved_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
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

/// An UpdateUser that sets only the name (no mask: the fields that are
/// set are the ones updated).
pub fn rename_request(
    user_id: impl Into<String>,
    name: impl Into<String>,
) -> user_service::pb::UpdateUserRequest {
    user_service::pb::UpdateUserRequest {
        user_id: user_id.into(),
        name: name.into(),
        status: 0,
        update_mask: None,
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

/// The real binary as a child process (for signals, exit codes, its own
/// memory figures and its log), on port 0 and the memory store unless
/// `env` says otherwise. Killed when dropped.
pub struct ChildApp {
    pub child: std::process::Child,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The lines the process wrote to stdout (its JSON log) and stderr,
    /// as they come; the readers stop at the process's exit.
    stdout: Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Arc<std::sync::Mutex<Vec<String>>>,
    /// While true, nothing more is read from stdout (see
    /// [`ChildApp::pause_stdout`]).
    stdout_paused: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts the binary with `env` (`USER_SERVICE__...` pairs) and waits until
/// `/readyz` says ready.
pub async fn spawn_child(env: &[(&str, &str)]) -> ChildApp {
    let app = start_child(env).await;
    app.wait_ready().await;
    app
}

/// Starts the binary on port 0 with a JSON log and `env` on top, and waits
/// for its `serving` line, which names the addresses its listeners got.
/// It does not wait for readiness (see [`spawn_child`]). The child gets
/// none of this process's `USER_SERVICE__*`, `OTEL_*` or `RUST_LOG`
/// variables, only `env`. The launcher's log level shows only warnings and
/// that line; `env` may raise it (with `USER_SERVICE__LOG__LEVEL` or
/// `RUST_LOG`), not lower it below `info` for `user_service::server`.
pub async fn start_child(env: &[(&str, &str)]) -> ChildApp {
    use std::io::BufRead;
    use std::process::Stdio;

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_user-service"));
    command
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("USER_SERVICE__LOG__FORMAT", "json")
        .env("USER_SERVICE__LOG__LEVEL", "warn,user_service::server=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("USER_SERVICE__") || key.starts_with("OTEL_") || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn the binary");
    type Lines = Arc<std::sync::Mutex<Vec<String>>>;
    let (stdout_lines, stderr_lines): (Lines, Lines) = (Arc::default(), Arc::default());
    let (serving_tx, serving_rx) = oneshot::channel::<(SocketAddr, SocketAddr)>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    // Threads, not tasks: they must keep draining the pipes (a full pipe
    // would stall the server) whatever the test's runtime is doing.
    let sink = Arc::clone(&stdout_lines);
    let stdout_paused: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)> = Arc::default();
    let paused = Arc::clone(&stdout_paused);
    let stdout_reader = std::thread::spawn(move || {
        let mut serving_tx = Some(serving_tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let serving = serving_tx.is_some().then(|| serving_addrs(&line)).flatten();
            // The line is kept before the test hears it is serving, so a
            // test that then reads the log finds the `serving` line.
            sink.lock().unwrap().push(line);
            if let Some(addrs) = serving {
                let _ = serving_tx.take().unwrap().send(addrs);
            }
            let (lock, resumed) = &*paused;
            let _running = resumed
                .wait_while(lock.lock().unwrap(), |paused| *paused)
                .unwrap();
        }
    });
    let sink = Arc::clone(&stderr_lines);
    let stderr_reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let serving = tokio::time::timeout(Duration::from_secs(20), serving_rx).await;
    let mut app = ChildApp {
        child,
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        stdout: stdout_lines,
        stderr: stderr_lines,
        stdout_paused,
        readers: vec![stdout_reader, stderr_reader],
    };
    match serving {
        Ok(Ok((grpc_addr, admin_addr))) => {
            app.grpc_addr = grpc_addr;
            app.admin_addr = admin_addr;
            app
        }
        Ok(Err(_)) => {
            let exit = app.wait_exit(Duration::from_secs(5)).await;
            panic!(
                "the binary stopped before its `serving` line ({exit:?}):\n{}",
                app.output()
            )
        }
        Err(_) => panic!("no `serving` line within 20s:\n{}", app.output()),
    }
}

/// The gRPC and admin addresses of a `serving` log line.
fn serving_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json["message"] != "serving" {
        return None;
    }
    let addr = |key: &str| json[key].as_str()?.parse().ok();
    Some((addr("grpc_addr")?, addr("admin_addr")?))
}

impl ChildApp {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops reading the child's stdout after the line being read (a log
    /// pipe nobody drains, as a stuck log shipper leaves it), until
    /// [`ChildApp::resume_stdout`].
    pub fn pause_stdout(&self) {
        *self.stdout_paused.0.lock().unwrap() = true;
    }

    pub fn resume_stdout(&self) {
        *self.stdout_paused.0.lock().unwrap() = false;
        self.stdout_paused.1.notify_all();
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while http_get(self.admin_addr, "/readyz").await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the binary never became ready:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// The log (stdout) lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The log lines so far that are JSON objects.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Everything written so far, stdout then stderr, for checks that
    /// nothing reached any output and for failure messages.
    pub fn output(&self) -> String {
        let mut all = String::new();
        for line in self.log_lines().iter().chain(&*self.stderr.lock().unwrap()) {
            all.push_str(line);
            all.push('\n');
        }
        all
    }

    /// SIGTERM, then the exit status within `within`; the output is then
    /// complete.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        // A paused reader would never see the pipe close.
        self.resume_stdout();
        self.signal("-TERM");
        let exit = self
            .wait_exit(within)
            .await
            .unwrap_or_else(|| panic!("no exit within {within:?} of SIGTERM"));
        // The pipes close with the process: the readers end at once.
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        exit
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
