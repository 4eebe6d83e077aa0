//! The service on PostgreSQL as it runs behind a load balancer: several
//! replicas on one database, restarts, outages, and the `migrate`
//! subcommand. Every test gets a fresh database (see `pg.rs`).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use sqlx::{Connection, Row};
use tokio::sync::oneshot;
use tonic::{Code, Request};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use user_service::{
    domain::PasswordHasher,
    pb::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, UserEvent,
        UserEventType, WatchUsersRequest,
    },
    server::Server,
};

use crate::{
    helpers::{connect, create_request, http_get, rename_request, spawn_app_with, TestApp},
    pg,
};

const READINESS: &str = "user.v1.UserService";

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    let response = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(response.status).expect("known status")
}

/// Polls until `/readyz` answers `status` (or panics after `within`).
async fn wait_readyz(admin: std::net::SocketAddr, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = http_get(admin, "/readyz").await.0;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got}, expected {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_event(events: &mut tonic::Streaming<UserEvent>) -> UserEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event within 10s")
        .expect("stream ended")
        .expect("stream failed")
}

async fn watch(app: &TestApp) -> tonic::Streaming<UserEvent> {
    // The call returns once the subscription is live.
    app.client
        .clone()
        .watch_users(WatchUsersRequest::default())
        .await
        .expect("watch")
        .into_inner()
}

fn get(user_id: &str) -> GetUserRequest {
    GetUserRequest {
        user_id: user_id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_share_users() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let a = spawn_app_with(db.settings()).await;
    let b = spawn_app_with(db.settings()).await;

    let created = a
        .client
        .clone()
        .create_user(create_request("shared"))
        .await
        .unwrap()
        .into_inner();
    let read = b
        .client
        .clone()
        .get_user(get(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created, "created through A, read through B");

    let renamed = b
        .client
        .clone()
        .update_user(rename_request(created.id.clone(), "Renamed via B"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a.client
            .clone()
            .get_user(get(&created.id))
            .await
            .unwrap()
            .into_inner(),
        renamed
    );

    let listed: Vec<_> = b
        .client
        .clone()
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|u| u.unwrap().id)
        .collect()
        .await;
    assert_eq!(listed, std::slice::from_ref(&created.id));

    a.client
        .clone()
        .delete_user(DeleteUserRequest {
            user_id: created.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        b.client
            .clone()
            .get_user(get(&created.id))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_emails_across_replicas_exactly_one_wins() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let a = spawn_app_with(db.settings()).await;
    let b = spawn_app_with(db.settings()).await;
    for round in 0..5 {
        let first = create_request(&format!("dup{round}"));
        let second = CreateUserRequest {
            email: first.email.to_uppercase(),
            ..first.clone()
        };
        let (mut ca, mut cb) = (a.client.clone(), b.client.clone());
        let (ra, rb) = tokio::join!(ca.create_user(first), cb.create_user(second));
        let codes = [ra, rb].map(|r| r.map(|_| Code::Ok).unwrap_or_else(|s| s.code()));
        let mut sorted = codes;
        sorted.sort_by_key(|c| *c as i32);
        assert_eq!(sorted, [Code::Ok, Code::AlreadyExists], "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_changes_made_through_another_once_in_order() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let a = spawn_app_with(db.settings()).await;
    let b = spawn_app_with(db.settings()).await;
    let mut on_b = watch(&b).await;
    let mut on_a = watch(&a).await;

    let mut client = a.client.clone();
    let user = client
        .create_user(create_request("watched"))
        .await
        .unwrap()
        .into_inner();
    let updated = client
        .update_user(rename_request(user.id.clone(), "Renamed"))
        .await
        .unwrap()
        .into_inner();
    client
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap();

    for (replica, events) in [("B", &mut on_b), ("A", &mut on_a)] {
        let kinds_and_users = [
            (UserEventType::Created, &user),
            (UserEventType::Updated, &updated),
            (UserEventType::Deleted, &updated),
        ];
        for (kind, expected) in kinds_and_users {
            let event = next_event(events).await;
            assert_eq!(event.r#type(), kind, "on {replica}");
            assert_eq!(event.user.as_ref(), Some(expected), "on {replica}");
        }
    }
    // The writer's own replica hears its changes through NOTIFY too, and
    // must not deliver them twice.
    for events in [&mut on_a, &mut on_b] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), events.next())
                .await
                .is_err(),
            "no duplicate events"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let first = spawn_app_with(db.settings()).await;
    let created = first
        .client
        .clone()
        .create_user(create_request("durable"))
        .await
        .unwrap()
        .into_inner();
    first.stop().await;

    let second = spawn_app_with(db.settings()).await;
    let read = second
        .client
        .clone()
        .get_user(get(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_password_anywhere_in_the_database() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let app = spawn_app_with(db.settings()).await;
    let password = "plaintext-Secret-0xC0FFEE";
    let mut ids = Vec::new();
    for i in 0..3 {
        let request = CreateUserRequest {
            password: password.into(),
            ..create_request(&format!("secret{i}"))
        };
        ids.push(
            app.client
                .clone()
                .create_user(request)
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }

    let mut conn = db.connect().await;
    // Every table of the schema, every row, every column, as text.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) \
         FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "public.users"), "{tables:?}");
    let needles = [password.to_owned(), password.to_lowercase()];
    for table in &tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {table} t"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for row in rows {
            for needle in &needles {
                assert!(!row.contains(needle.as_str()), "{table} holds the password");
            }
        }
    }
    // What is there instead: a salted argon2id hash that verifies.
    let hashes: Vec<String> = sqlx::query("SELECT password_hash FROM users")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("password_hash"))
        .collect();
    assert_eq!(hashes.len(), ids.len());
    for hash in &hashes {
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(PasswordHasher::verify(password, hash));
    }
    assert_ne!(hashes[0], hashes[1], "salted");
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_and_heals_without_a_restart() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let app = spawn_app_with(db.settings()).await;
    let mut client = app.client.clone();
    let mut watcher = watch(&app).await;
    let before = client
        .create_user(create_request("acked"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut watcher).await.user.unwrap().id, before.id);

    db.cut_off().await;

    // Calls fail with UNAVAILABLE long before their deadline.
    for _ in 0..3 {
        let mut request = Request::new(get(&before.id));
        request.set_timeout(Duration::from_secs(10));
        let started = Instant::now();
        let status = client.get_user(request).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(!status.message().contains("SQL"), "{}", status.message());
    }
    let mut request = Request::new(create_request("during"));
    request.set_timeout(Duration::from_secs(10));
    let started = Instant::now();
    assert_eq!(
        client.create_user(request).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Not ready, but alive: restarting would not bring the database back.
    wait_readyz(app.admin_addr, 503, Duration::from_secs(5)).await;
    assert_eq!(health(&app, READINESS).await, ServingStatus::NotServing);
    assert_eq!(health(&app, "").await, ServingStatus::Serving);
    assert_eq!(http_get(app.admin_addr, "/livez").await.0, 200);

    db.restore().await;

    // Readiness and calls come back by themselves.
    wait_readyz(app.admin_addr, 200, Duration::from_secs(20)).await;
    assert_eq!(health(&app, READINESS).await, ServingStatus::Serving);
    let read = client.get_user(get(&before.id)).await.unwrap().into_inner();
    assert_eq!(read, before, "an acknowledged write survived the outage");

    // The listener reconnected: the watcher from before the outage keeps
    // receiving, and a new one does too.
    let mut fresh_watcher = watch(&app).await;
    let after = client
        .create_user(create_request("after"))
        .await
        .unwrap()
        .into_inner();
    for events in [&mut watcher, &mut fresh_watcher] {
        let event = next_event(events).await;
        assert_eq!(event.r#type(), UserEventType::Created);
        assert_eq!(event.user.unwrap().id, after.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_database_is_down_and_becomes_ready_when_it_appears() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    db.cut_off().await;
    let server = Server::bind(db.settings())
        .await
        .expect("startup does not need the database");
    let admin = server.admin_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    assert_eq!(http_get(admin, "/livez").await.0, 200);

    db.restore().await;
    // Migrations run in the background once the database answers.
    wait_readyz(admin, 200, Duration::from_secs(20)).await;
    let mut conn = db.connect().await;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('users')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(table.as_deref(), Some("users"));
    let _ = conn.close().await;

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A replica that must not migrate (`store.migrate=false`, as under the
/// chart's hook Job) started before anyone migrated: calls that reach it
/// anyway find no table. That is "not ready yet", so clients must see
/// UNAVAILABLE (retryable) rather than INTERNAL; once the migrations are
/// applied, the same server serves without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_before_the_migrations_are_unavailable_then_served_once_migrated() {
    use user_service::pb::user_service_client::UserServiceClient;

    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let mut settings = db.settings();
    settings.store.migrate = false;
    let server = Server::bind(settings).await.expect("bind");
    let (admin, grpc) = (server.admin_addr(), server.grpc_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut client = UserServiceClient::new(connect(grpc).await);

    // Readiness tells the load balancer the truth meanwhile.
    wait_readyz(admin, 503, Duration::from_secs(5)).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let failures = [
        ("GetUser", client.get_user(get(&missing)).await.map(drop)),
        (
            "CreateUser",
            client.create_user(create_request("early")).await.map(drop),
        ),
        (
            "UpdateUser",
            client
                .update_user(rename_request(missing.clone(), "Early"))
                .await
                .map(drop),
        ),
        (
            "DeleteUser",
            client
                .delete_user(DeleteUserRequest {
                    user_id: missing.clone(),
                })
                .await
                .map(drop),
        ),
    ];
    for (method, result) in failures {
        let status = result.expect_err(method);
        assert_eq!(status.code(), Code::Unavailable, "{method}: {status:?}");
        // Short, and no SQL or driver text reaches the client.
        let message = status.message();
        assert!(message.len() < 100, "{method}: {message}");
        for leak in ["relation", "users\"", "SQLSTATE", "42P01"] {
            assert!(
                !message.contains(leak),
                "{method} leaks {leak:?}: {message}"
            );
        }
    }
    assert_eq!(http_get(admin, "/readyz").await.0, 503, "still not ready");

    // What the chart's pre-install hook Job runs.
    let out = migrate_command(&db.url).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same server, same pool: served at once, ready soon after (the
    // schema check re-runs with backoff).
    let created = client
        .create_user(create_request("migrated"))
        .await
        .expect("CreateUser after migrating")
        .into_inner();
    let read = client
        .get_user(get(&created.id))
        .await
        .expect("GetUser after migrating")
        .into_inner();
    assert_eq!(read, created);
    wait_readyz(admin, 200, Duration::from_secs(20)).await;

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

fn migrate_command(store_url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_user-service"));
    cmd.arg("migrate")
        .arg("--store-url")
        .arg(store_url)
        .env("USER_SERVICE__STORE__CONNECT_TIMEOUT", "2s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_subcommand_creates_the_schema_idempotently() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    for run in 0..2 {
        let out = migrate_command(&db.url).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {stderr}");
        if let Some(password) = pg::password() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(!stderr.contains(&password) && !stdout.contains(&password));
        }
    }
    let mut conn = db.connect().await;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_name = 'users' ORDER BY ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(columns.contains(&"email_key".to_owned()), "{columns:?}");
    let _ = conn.close().await;
}

#[tokio::test]
async fn the_migrate_subcommand_fails_clearly_when_the_database_is_unreachable() {
    // Nothing listens on port 1.
    let url = "postgres://app:s3cr3t-pw@127.0.0.1:1/users";
    let started = Instant::now();
    let out = migrate_command(url).output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by connect_timeout"
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
    assert!(text.contains("app:***@127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_statement_timeout_is_unavailable_and_pool_stats_are_reported() {
    use user_service::{
        domain::StoreError,
        domain::{now, UserName, UserPatch},
        store,
    };

    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let mut settings = db.settings();
    settings.store.statement_timeout = Duration::from_millis(300);
    settings.store.max_connections = 3;
    let store = store::open(&settings.store).await.unwrap();
    pg::wait_until_ready(&store).await;
    let user = store
        .create(crate::helpers::new_user("locked@example.com", "Locked"))
        .await
        .unwrap();

    // Another session holds the row: the UPDATE waits for its lock until
    // the server-side statement_timeout cancels it.
    let mut locker = db.connect().await;
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.id.as_uuid())
        .execute(&mut locker)
        .await
        .unwrap();
    let started = Instant::now();
    let patch = UserPatch {
        name: Some(UserName::parse("Blocked").unwrap()),
        status: None,
    };
    let err = store.update(user.id, patch, now()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, StoreError::Unavailable(ref m) if m.contains("57014")),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let _ = locker.close().await;
    assert_eq!(store.get(user.id).await.unwrap(), user, "nothing changed");

    let stats = store.pool_stats().expect("the PostgreSQL store has a pool");
    assert_eq!(stats.max, 3);
    assert!(
        stats.size >= 1 && stats.size <= 3 && stats.idle <= stats.size,
        "{stats:?}"
    );
}

/// Ends every listener connection on `db` (every replica's), the way a
/// failover, a proxy restart or an operator would; returns how many.
async fn kill_listeners(db: &pg::TestDb) -> i64 {
    let mut admin = pg::admin().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = $2",
    )
    .bind(&db.name)
    .bind(user_service::store::LISTENER_APPLICATION_NAME)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let _ = admin.close().await;
    killed
}

/// Waits until `count` listener connections are LISTENing on `db` again.
async fn wait_for_listeners(db: &pg::TestDb, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut admin = pg::admin().await;
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2 AND query LIKE 'LISTEN%'",
        )
        .bind(&db.name)
        .bind(user_service::store::LISTENER_APPLICATION_NAME)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
        if listening >= count {
            return;
        }
        assert!(Instant::now() < deadline, "listeners did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watch_since(app: &TestApp, since_revision: u64) -> tonic::Streaming<UserEvent> {
    app.client
        .clone()
        .watch_users(WatchUsersRequest {
            user_ids: vec![],
            since_revision,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The feed loses nothing when the listener connections are killed while
/// writes flow: a live watcher on a replica gets the gap filled (the
/// listener reads what it missed from `user_changes`), and a watcher that
/// goes away and resumes from its last revision sees every change. Both
/// exactly once, in revision order, equal to the table's contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listener_loses_no_change() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let writer_app = spawn_app_with(db.settings()).await;
    let replica = spawn_app_with(db.settings()).await;
    wait_for_listeners(&db, 2).await;
    let mut live = watch(&replica).await;
    let mut resumed = watch(&replica).await;

    let mut client = writer_app.client.clone();
    let user = client
        .create_user(create_request("flow"))
        .await
        .unwrap()
        .into_inner();
    let total_updates = 150;
    let writer = tokio::spawn(async move {
        for i in 0..total_updates {
            client
                .update_user(rename_request(user.id.clone(), format!("Flow {i}")))
                .await
                .expect("writes go on while listeners are away");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // The resuming watcher takes a few events, goes away, and comes back
    // later from its last revision, with listeners killed in between.
    let mut seen_by_resumed = Vec::new();
    for _ in 0..10 {
        seen_by_resumed.push(next_event(&mut resumed).await.revision);
    }
    drop(resumed);
    for _ in 0..3 {
        wait_for_listeners(&db, 2).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(kill_listeners(&db).await >= 1, "a listener was killed");
    }
    let mut resumed = watch_since(&replica, *seen_by_resumed.last().unwrap()).await;
    writer.await.unwrap();

    let mut conn = db.connect().await;
    let expected: Vec<i64> =
        sqlx::query_scalar("SELECT revision FROM user_changes ORDER BY revision")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    let expected: Vec<u64> = expected.into_iter().map(|r| r as u64).collect();
    assert_eq!(expected.len(), 1 + total_updates, "one row per change");

    let mut seen_live = Vec::new();
    while seen_live.len() < expected.len() {
        seen_live.push(next_event(&mut live).await.revision);
    }
    assert_eq!(
        seen_live, expected,
        "the live watcher got every change once, in order"
    );

    while seen_by_resumed.len() < expected.len() {
        seen_by_resumed.push(next_event(&mut resumed).await.revision);
    }
    assert_eq!(seen_by_resumed, expected, "the resumed watcher too");

    for events in [&mut live, &mut resumed] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), events.next())
                .await
                .is_err(),
            "no duplicate events"
        );
    }
}

/// Revisions drawn by concurrent writers on two replicas become visible in
/// increasing order: a watcher never sees a revision lower than one it has
/// already seen, and the table holds exactly what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_replicas_produce_an_ordered_feed() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let a = spawn_app_with(db.settings()).await;
    let b = spawn_app_with(db.settings()).await;
    let mut events = watch(&a).await;
    let mut writers = Vec::new();
    for (app, tag) in [(&a, "a"), (&b, "b")] {
        for w in 0..4 {
            let mut client = app.client.clone();
            let user = client
                .create_user(create_request(&format!("{tag}{w}")))
                .await
                .unwrap()
                .into_inner();
            writers.push(tokio::spawn(async move {
                for i in 0..20 {
                    client
                        .update_user(rename_request(user.id.clone(), format!("Race {i}")))
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut conn = db.connect().await;
    let expected: Vec<i64> =
        sqlx::query_scalar("SELECT revision FROM user_changes ORDER BY revision")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(next_event(&mut events).await.revision as i64);
    }
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_past_retention_is_out_of_range_over_grpc() {
    let Some(db) = pg::fresh_db().await else {
        return;
    };
    let mut settings = db.settings();
    settings.store.change_retention = 3;
    let app = spawn_app_with(settings).await;
    let mut client = app.client.clone();
    let user = client
        .create_user(create_request("old"))
        .await
        .unwrap()
        .into_inner();
    for i in 0..10 {
        client
            .update_user(rename_request(user.id.clone(), format!("Old {i}")))
            .await
            .unwrap();
    }
    let status = client
        .watch_users(WatchUsersRequest {
            user_ids: vec![],
            since_revision: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("oldest available revision is"),
        "{}",
        status.message()
    );
    // Within the window it replays: the last three changes, then live.
    let mut events = watch_since(&app, 8).await;
    for revision in 9..=11 {
        assert_eq!(next_event(&mut events).await.revision, revision);
    }
}
