//! The bundled client library and `userctl`, against the real server.

use std::{process::Stdio, time::Duration};

use futures_util::StreamExt;
use tokio::{io::AsyncWriteExt, process::Command};
use user_service_client::{ClientConfig, ClientError, UserClient};

use crate::helpers::{email, spawn_app, spawn_app_on, test_settings};

#[tokio::test]
async fn the_client_library_maps_errors_to_typed_variants() {
    let app = spawn_app().await;
    let client = UserClient::connect(ClientConfig {
        endpoint: format!("http://{}", app.grpc_addr),
        ..ClientConfig::default()
    })
    .await
    .unwrap();

    let address = email("lib");
    let user = client
        .create_user(&address, "Lib", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(client.get_user(&user.id).await.unwrap(), user);
    assert!(matches!(
        client
            .create_user(&address, "Again", "correct horse battery")
            .await,
        Err(ClientError::AlreadyExists(_))
    ));
    match client.create_user("bad", "", "x").await {
        Err(ClientError::Invalid(violations)) => {
            let fields: Vec<_> = violations.iter().map(|(f, _)| f.as_str()).collect();
            assert_eq!(fields, ["email", "name", "password"]);
        }
        other => panic!("{other:?}"),
    }
    let users: Vec<_> = client
        .list_users(0, "", Duration::from_secs(5))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(users.len(), 1);
    client.delete_user(&user.id).await.unwrap();
    assert!(matches!(
        client.get_user(&user.id).await,
        Err(ClientError::NotFound(_))
    ));
}

#[tokio::test]
async fn connecting_to_nothing_fails_within_the_connect_timeout() {
    let started = std::time::Instant::now();
    let result = UserClient::connect(ClientConfig {
        endpoint: "http://127.0.0.1:1".into(),
        connect_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    })
    .await;
    assert!(matches!(result, Err(ClientError::Connect(_))));
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn userctl(addr: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(crate::helpers::userctl())
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("USERCTL_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .await
        .unwrap();
    drop(input);
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

#[tokio::test]
async fn userctl_drives_every_unary_call_and_list() {
    let app = spawn_app().await;
    let addr = format!("http://{}", app.grpc_addr);
    let address = email("ctl");

    let (ok, out, err) = userctl(
        &addr,
        &["create", "--email", &address, "--name", "Ctl"],
        Some("correct horse battery\n"),
    )
    .await;
    assert!(ok, "{err}");
    let user: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(user["status"], "USER_STATUS_ACTIVE");
    let id = user["id"].as_str().unwrap().to_owned();

    let (ok, out, _) = userctl(&addr, &["update", &id, "--status", "inactive"], None).await;
    assert!(ok);
    assert!(out.contains("USER_STATUS_INACTIVE"));

    let (ok, out, _) = userctl(&addr, &["list"], None).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains(&id));

    let (ok, _, _) = userctl(&addr, &["delete", &id], None).await;
    assert!(ok);
    let (ok, _, err) = userctl(&addr, &["get", &id], None).await;
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    let (ok, _, err) = userctl(
        &addr,
        &["create", "--email", "nope", "--name", "X"],
        Some("short\n"),
    )
    .await;
    assert!(!ok);
    assert!(err.contains("email") && err.contains("password"), "{err}");
    assert!(
        !err.contains("short"),
        "the password is never echoed: {err}"
    );
}

#[tokio::test]
async fn userctl_watch_since_a_revision_the_server_does_not_have_fails_clearly() {
    let app = spawn_app().await;
    let addr = format!("http://{}", app.grpc_addr);
    let (ok, _, err) = userctl(&addr, &["watch", "--since", "999"], None).await;
    assert!(!ok, "a watch that cannot resume ends instead of waiting");
    assert!(err.contains("newer than the latest revision 0"), "{err}");
}

#[tokio::test]
async fn userctl_watch_once_ends_with_the_status_of_a_draining_server() {
    let mut app = spawn_app().await;
    let addr = format!("http://{}", app.grpc_addr);
    let watcher = tokio::spawn(async move { userctl(&addr, &["watch", "--once"], None).await });
    // Let the watch open, then start the shutdown: draining ends it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = app.begin_shutdown();
    let (ok, _, err) = watcher.await.unwrap();
    assert!(!ok, "the watch ended with the server, not by itself");
    assert!(err.to_lowercase().contains("unavailable"), "{err}");
    server.await.unwrap();
}

/// `follow_users` resumes by itself: a watcher that falls behind (a
/// one-event buffer and a burst of writes while it cannot run) is ended by
/// the server with RESOURCE_EXHAUSTED, and the stream goes on with every
/// change exactly once, in order, whether it had received an event yet
/// (it resumes from the `watch-revision` header) or not (from the last
/// event's revision).
#[tokio::test]
async fn follow_users_resumes_from_the_last_revision() {
    use user_service::{
        domain::UserStore,
        domain::{now, UserName, UserPatch},
        store::MemoryStore,
    };

    let store: std::sync::Arc<dyn UserStore> =
        std::sync::Arc::new(MemoryStore::with_retention(1, 1000));
    let app = spawn_app_on(test_settings(), store.clone()).await;
    let client = UserClient::connect(ClientConfig {
        endpoint: format!("http://{}", app.grpc_addr),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let user = store
        .create(crate::helpers::new_user(&email("follow"), "Follow"))
        .await
        .unwrap();
    // A burst the server cannot forward as it happens: this test's runtime
    // has one thread and the loop never yields, so the watcher lags.
    let burst = |count: usize| {
        let store = store.clone();
        async move {
            for i in 0..count {
                let patch = UserPatch {
                    name: Some(UserName::parse(&format!("Burst {i}")).unwrap()),
                    status: None,
                };
                store.update(user.id, patch, now()).await.unwrap();
            }
        }
    };
    let mut events = Box::pin(client.follow_users(vec![], 0));
    let mut revisions = Vec::new();

    // Before the first event: the burst starts once the watch is live
    // (the first poll below subscribes).
    let early = tokio::spawn({
        let burst = burst(20);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            burst.await
        }
    });
    take_revisions(&mut events, 20, &mut revisions).await;
    early.await.unwrap();

    // After some events.
    burst(50).await;
    take_revisions(&mut events, 50, &mut revisions).await;
    // The create was revision 1, before the watch.
    let expected: Vec<u64> = (2..=71).collect();
    assert_eq!(revisions, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "no duplicates after the resume"
    );
}

/// The revisions of the next `count` events, each within 5 s.
async fn take_revisions<S>(events: &mut S, count: usize, into: &mut Vec<u64>)
where
    S: futures_util::Stream<Item = Result<user_service_client::pb::UserEvent, ClientError>> + Unpin,
{
    for _ in 0..count {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        into.push(event.revision);
    }
}
