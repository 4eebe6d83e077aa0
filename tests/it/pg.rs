//! A fresh PostgreSQL database per test, on the cluster the standard
//! libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) point
//! at. The test command (`make test`, scripts/test.sh) provides a
//! throwaway cluster and sets `USER_SERVICE_TEST_REQUIRE_DB=1`, so there a
//! missing cluster fails the tests. Without that variable (a plain
//! `cargo test`) a PostgreSQL test that finds no cluster says so on stderr,
//! names the ways to get one, and passes without checking anything:
//! `let Some(db) = pg::fresh_db().await else { return };`.

#![allow(dead_code)] // each test module uses a different subset

use std::{sync::Arc, time::Duration};

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use user_service::{
    config::{Settings, StoreUrl},
    domain::UserStore,
    store,
};

const NO_CLUSTER: &str = "the PostgreSQL tests (store_contract::postgres::*, postgres::*) need a \
     cluster named by PGHOST/PGUSER (PGPORT, PGPASSWORD optional): run `make test`, or \
     `pg_virtualenv cargo test` (Debian's postgresql-common), or point PG* at your own server";

const NO_SERVER: &str = "the PostgreSQL outage tests (outage::*) start a cluster of their own \
     and need PostgreSQL's server binaries under /usr/lib/postgresql/*/bin (Debian: apt-get \
     install postgresql); `make test` installs them";

/// Set by the test command: a PostgreSQL test that finds no PostgreSQL
/// fails instead of passing with a notice, so none is skipped there.
pub const REQUIRE_DB: &str = "USER_SERVICE_TEST_REQUIRE_DB";

/// PostgreSQL (`missing` says what of it) is not there: a failure under
/// the test command; elsewhere a notice, on stderr past the test harness's
/// capture so that a passing run shows it too, and the test is to return.
fn not_available(missing: &'static str) {
    use std::io::Write;
    if var(REQUIRE_DB).is_some_and(|v| v != "0") {
        panic!("{missing} ({REQUIRE_DB} is set: the test command must provide it)");
    }
    static EXPLAINED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let test = std::thread::current()
        .name()
        .unwrap_or("a PostgreSQL test")
        .to_owned();
    let mut explained = EXPLAINED.lock().unwrap();
    let why = if explained.contains(&missing) {
        "PostgreSQL is not there (see above)"
    } else {
        explained.push(missing);
        missing
    };
    let _ = writeln!(
        std::io::stderr(),
        "NOT RUN (passes without checking anything) {test}: {why}"
    );
}

/// A database of its own, dropped (with any session still on it) when the
/// value is.
pub struct TestDb {
    pub name: String,
    /// Connection URL of this database, password included.
    pub url: String,
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Percent-encodes a URL component (user, password, host, database).
fn enc(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URL of `database` on the test cluster.
pub fn url_for(database: &str) -> String {
    let (Some(host), Some(user)) = (var("PGHOST"), var("PGUSER")) else {
        panic!("{NO_CLUSTER}");
    };
    let port = var("PGPORT").unwrap_or_else(|| "5432".into());
    let auth = match var("PGPASSWORD") {
        Some(password) => format!("{}:{}", enc(&user), enc(&password)),
        None => enc(&user),
    };
    format!("postgres://{auth}@{}:{port}/{}", enc(&host), enc(database))
}

/// The cluster's maintenance database, for CREATE/ALTER/DROP DATABASE.
pub fn admin_url() -> String {
    url_for(&var("PGDATABASE").unwrap_or_else(|| "postgres".into()))
}

pub fn password() -> Option<String> {
    var("PGPASSWORD")
}

pub async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("{NO_CLUSTER}: cannot connect to the test cluster: {e}"))
}

/// Runs one statement on the maintenance database.
pub async fn admin_exec(sql: String) {
    let mut conn = admin().await;
    conn.execute(AssertSqlSafe(sql.clone()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// A new database on the test cluster, or `None` (after the notice of
/// [`not_available`]) when no cluster is named.
pub async fn fresh_db() -> Option<TestDb> {
    if var("PGHOST").is_none() || var("PGUSER").is_none() {
        not_available(NO_CLUSTER);
        return None;
    }
    let name = format!("test_{}", uuid::Uuid::now_v7().simple());
    admin_exec(format!("CREATE DATABASE {name}")).await;
    Some(TestDb {
        url: url_for(&name),
        name,
    })
}

impl TestDb {
    /// Test settings (see `helpers::test_settings`) on this database.
    pub fn settings(&self) -> Settings {
        let mut s = crate::helpers::test_settings();
        s.store.url = StoreUrl::parse(&self.url).unwrap();
        s
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    /// Ends every session on this database and refuses new ones: to the
    /// service it looks like the database went away.
    pub async fn cut_off(&self) {
        let name = &self.name;
        admin_exec(format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
        ))
        .await;
        admin_exec(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await;
    }

    /// Undoes [`TestDb::cut_off`].
    pub async fn restore(&self) {
        admin_exec(format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be going away: use
        // a thread with a runtime of its own. Best effort: the cluster is
        // thrown away after the run anyway.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = conn.execute(AssertSqlSafe(sql)).await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL store on a fresh database, once it is ready (schema
/// migrated, event listener subscribed).
pub async fn store(db: &TestDb) -> Arc<dyn UserStore> {
    store_with(&db.settings()).await
}

/// Like [`store`], with settings of the caller's.
pub async fn store_with(settings: &Settings) -> Arc<dyn UserStore> {
    let store = store::open(&settings.store).await.expect("open store");
    wait_until_ready(&store).await;
    store
}

pub async fn wait_until_ready(store: &Arc<dyn UserStore>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match store.check().await {
            Ok(()) => return,
            Err(err) if tokio::time::Instant::now() > deadline => {
                panic!("PostgreSQL store never became ready: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temporary
/// directory, on a loopback port of its own), so the test can stop, start,
/// freeze and thaw it; the shared test cluster is never touched. Stopped
/// and deleted when dropped.
pub struct OwnCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

/// initdb refuses to run as root: run the cluster's tools as `postgres`
/// then.
fn pg_command(bin: &std::path::Path, tool: &str) -> std::process::Command {
    let path = bin.join(tool);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        std::process::Command::new(path)
    }
}

fn run(mut command: std::process::Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnCluster {
    /// A new cluster, running; or `None` (after the notice of
    /// [`not_available`]) without PostgreSQL's server binaries.
    pub fn start_new() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max();
        let Some(bin) = bin else {
            not_available(NO_SERVER);
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status();
        let mut cluster = Self { dir, bin, port: 0 };
        let mut initdb = pg_command(&cluster.bin, "initdb");
        initdb
            .args(["-A", "trust", "-U", "app", "--no-sync", "-D"])
            .arg(cluster.data());
        run(initdb, "initdb");
        // The postmaster is told its port (it cannot report one it chose,
        // and a restart must get the same one), so the port may be taken
        // by the time it binds: then it fails to start and we try another.
        for _ in 0..5 {
            cluster.port = crate::helpers::unreserved_port();
            if cluster.try_start().is_ok() {
                return Some(cluster);
            }
        }
        cluster.start();
        Some(cluster)
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://app@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub fn start(&self) {
        if let Err(why) = self.try_start() {
            panic!("pg_ctl start: {why}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let mut pg_ctl = pg_command(&self.bin, "pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "30", "start"]);
        let out = pg_ctl.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        Err(format!(
            "{}{}{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Stops it (fast: sessions are ended, as in a crash or failover).
    pub fn stop(&self) {
        let mut pg_ctl = pg_command(&self.bin, "pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        run(pg_ctl, "pg_ctl stop");
    }

    fn postmaster(&self) -> Option<String> {
        let pid_file =
            std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap_or_default();
        let pid = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        (!pid.is_empty()).then_some(pid)
    }

    /// The postmaster's children: backends, background workers.
    fn backends(postmaster: &str) -> Vec<String> {
        std::process::Command::new("pgrep")
            .args(["-P", postmaster])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The postmaster and every backend: what a hung database host looks
    /// like (connections open, nothing answers).
    fn processes(&self) -> Vec<String> {
        let Some(postmaster) = self.postmaster() else {
            return Vec::new();
        };
        let backends = Self::backends(&postmaster);
        std::iter::once(postmaster).chain(backends).collect()
    }

    /// SIGSTOP (`-STOP`) or SIGCONT (`-CONT`) to the postmaster and its
    /// backends.
    ///
    /// To stop, the postmaster goes first and its children are listed
    /// after: a backend it forks for a new pool connection between a
    /// listing and the signal would otherwise keep answering, and the
    /// "hung" database would serve whoever got that connection.
    pub fn signal_all(&self, signal: &str) {
        let postmaster = self.postmaster().expect("the cluster is running");
        let mut kill = std::process::Command::new("kill");
        kill.arg(signal).arg(&postmaster);
        run(kill, "kill");
        // A backend may exit between the listing and the signal (its
        // client hung up); kill still signals the others, so its exit
        // status is not a failure here.
        let backends = Self::backends(&postmaster);
        if !backends.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg(signal)
                .args(&backends)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .args(self.processes())
            .status();
        let mut pg_ctl = pg_command(&self.bin, "pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _ = pg_ctl.status();
    }
}
