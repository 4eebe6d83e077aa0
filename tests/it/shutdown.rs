//! The graceful shutdown sequence Kubernetes relies on.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use user_service::pb::{ListUsersRequest, UpdateUserRequest, WatchUsersRequest};

use crate::helpers::{connect, create_request, free_addr, http_get, spawn_app_with, test_settings};

async fn readiness(channel: tonic::transport::Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test]
async fn readiness_drops_at_once_while_calls_still_succeed_during_the_drain_delay() {
    let mut settings = test_settings();
    settings.shutdown.drain_delay = Duration::from_secs(2);
    let mut app = spawn_app_with(settings).await;
    let mut client = app.client.clone();

    let started = Instant::now();
    let server = app.begin_shutdown();
    // Readiness flips first, well before the drain delay is over.
    loop {
        if http_get(app.admin_addr, "/readyz").await.0 == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "/readyz still 200"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        readiness(app.channel.clone(), "user.v1.UserService").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        readiness(app.channel.clone(), "").await,
        ServingStatus::Serving,
        "still live"
    );
    assert_eq!(http_get(app.admin_addr, "/livez").await.0, 200);

    // Calls routed to us before the load balancer noticed still work.
    client
        .create_user(create_request("during-drain"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));

    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "served for the whole drain delay"
    );
    // The listener is closed: new connections are refused.
    let refused = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn an_in_flight_list_stream_completes_in_full() {
    let mut settings = test_settings();
    settings.limits.list_batch = 2;
    settings.shutdown.drain_delay = Duration::from_millis(200);
    let mut app = spawn_app_with(settings).await;
    let mut client = app.client.clone();
    let users = futures_util::stream::iter((0..30).map(|i| create_request(&format!("drain{i}"))));
    assert_eq!(
        client
            .bulk_create_users(users)
            .await
            .unwrap()
            .into_inner()
            .created_count,
        30
    );

    let mut stream = client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut received = vec![stream.next().await.unwrap().unwrap()];
    let server = app.begin_shutdown();
    // A slow reader: the stream outlives the drain delay.
    while let Some(user) = stream.next().await {
        tokio::time::sleep(Duration::from_millis(20)).await;
        received.push(user.expect("no error while draining"));
    }
    assert_eq!(received.len(), 30, "every user arrived");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn watch_streams_end_with_unavailable_when_draining_starts() {
    let mut settings = test_settings();
    settings.shutdown.drain_delay = Duration::from_millis(300);
    let mut app = spawn_app_with(settings).await;
    let mut events = app
        .client
        .clone()
        .watch_users(WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();

    let started = Instant::now();
    let server = app.begin_shutdown();
    let status = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "clients reconnect elsewhere"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the drain delay"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn streams_still_open_at_the_timeout_are_cancelled() {
    let mut settings = test_settings();
    settings.shutdown.drain_delay = Duration::from_millis(100);
    settings.shutdown.timeout = Duration::from_millis(500);
    let mut app = spawn_app_with(settings).await;
    let mut client = app.client.clone();
    let user = client
        .create_user(create_request("stuck"))
        .await
        .unwrap()
        .into_inner();

    // A bidi stream whose client never half-closes.
    let (tx, rx) = mpsc::channel(1);
    let mut answers = client
        .user_updates(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(UpdateUserRequest {
        user_id: user.id.clone(),
        name: "Once".into(),
        status: 0,
        update_mask: None,
    })
    .await
    .unwrap();
    answers.next().await.unwrap().unwrap();

    let started = Instant::now();
    let server = app.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown is bounded")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the timeout was given in full"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("the stream ended");
    assert!(matches!(ended, Some(Err(_)) | None), "{ended:?}");
    drop(tx);
}

#[tokio::test]
async fn the_binary_drains_and_exits_zero_on_sigterm_and_sigint() {
    for signal in ["-TERM", "-INT"] {
        let (grpc, admin) = (free_addr(), free_addr());
        let mut child = Command::new(env!("CARGO_BIN_EXE_user-service"))
            .args([
                "--grpc-addr",
                &grpc.to_string(),
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "500ms")
            .env("USER_SERVICE__SHUTDOWN__TIMEOUT", "2s")
            .env_remove("USER_SERVICE__STORE__URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();

        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(admin, "/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let channel = connect(grpc).await;
        assert_eq!(
            readiness(channel.clone(), "user.v1.UserService").await,
            ServingStatus::Serving
        );

        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let sent = Instant::now();
        // Not ready at once, though still answering.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(http_get(admin, "/readyz").await.0, 503, "{signal}");
        assert_eq!(
            readiness(channel.clone(), "user.v1.UserService").await,
            ServingStatus::NotServing
        );

        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "did not exit after {signal}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(exit.code(), Some(0), "{signal}");
        assert!(
            sent.elapsed() >= Duration::from_millis(500),
            "waited out the drain delay"
        );
    }
}
