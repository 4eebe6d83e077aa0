//! The graceful shutdown sequence Kubernetes relies on.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use user_service::pb::{
    user_service_client::UserServiceClient, GetUserRequest, ListUsersRequest, WatchUsersRequest,
};

use crate::helpers::{
    connect, connect_small_window, create_request, http_get, rename_request, seed_file,
    spawn_app_with, spawn_child, test_settings,
};

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
    tx.send(rename_request(user.id.clone(), "Once"))
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
        let mut app = spawn_child(&[
            ("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "500ms"),
            ("USER_SERVICE__SHUTDOWN__TIMEOUT", "2s"),
        ])
        .await;
        let channel = connect(app.grpc_addr).await;
        assert_eq!(
            readiness(channel.clone(), "user.v1.UserService").await,
            ServingStatus::Serving
        );

        app.signal(signal);
        let sent = Instant::now();
        // Not ready at once, though still answering.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 503, "{signal}");
        assert_eq!(
            readiness(channel.clone(), "user.v1.UserService").await,
            ServingStatus::NotServing
        );

        let exit = app.wait_exit(Duration::from_secs(10)).await;
        let exit = exit.unwrap_or_else(|| panic!("did not exit after {signal}"));
        assert_eq!(exit.code(), Some(0), "{signal}");
        assert!(
            sent.elapsed() >= Duration::from_millis(500),
            "waited out the drain delay"
        );
    }
}

/// What one call of the load did, relative to the SIGTERM.
struct Outcome {
    started: Instant,
    result: Result<(), Status>,
}

/// A rolling restart as Kubernetes does it, under load: 64 clients calling
/// unary RPCs in a loop, plus open ListUsers and WatchUsers streams, when
/// the pod gets SIGTERM.
#[tokio::test]
async fn a_rolling_restart_under_load_fails_no_call_started_before_sigterm() {
    const DRAIN: Duration = Duration::from_millis(1500);
    const TIMEOUT: Duration = Duration::from_secs(3);
    const WORKERS: usize = 64;
    const LISTED: usize = 400;
    let (seed, ids) = seed_file(LISTED);
    let seed_path = seed.path().display().to_string();
    let mut app = spawn_child(&[
        ("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "1500ms"),
        ("USER_SERVICE__SHUTDOWN__TIMEOUT", "3s"),
        ("USER_SERVICE__LIMITS__LIST_BATCH", "16"),
        ("USER_SERVICE__STORE__SEED_FILE", &seed_path),
    ])
    .await;
    // A few connections, as a few client pods would have.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(connect(app.grpc_addr).await);
    }

    // Open streams: slow ListUsers readers (must complete in full) and
    // watchers (must end with UNAVAILABLE, not before the drain delay).
    let mut lists = Vec::new();
    for _ in 0..2 {
        // Small windows: the server streams only as fast as this reader
        // reads, so the stream is still open when draining starts.
        let channel = connect_small_window(app.grpc_addr, 4096).await;
        let mut stream = UserServiceClient::new(channel)
            .list_users(ListUsersRequest::default())
            .await
            .unwrap()
            .into_inner();
        lists.push(tokio::spawn(async move {
            // Paced to take ~3.5 s in all: past SIGTERM + drain delay,
            // well within the shutdown timeout.
            let begun = Instant::now();
            let mut n = 0;
            while let Some(item) = stream.next().await {
                item?;
                n += 1;
                let due = begun + Duration::from_millis(3500) * n as u32 / LISTED as u32;
                tokio::time::sleep_until(due.into()).await;
            }
            Ok::<_, Status>((n, Instant::now()))
        }));
    }
    let mut watches = Vec::new();
    for channel in &channels {
        let mut events = UserServiceClient::new(channel.clone())
            .watch_users(WatchUsersRequest::default())
            .await
            .unwrap()
            .into_inner();
        watches.push(tokio::spawn(async move {
            loop {
                match events.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return (Some(status.code()), Instant::now()),
                    None => return (None, Instant::now()),
                }
            }
        }));
    }

    // The unary load: reads and writes (no hashing, so the load stays on
    // the gRPC path rather than on argon2).
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let mut client = UserServiceClient::new(channels[w % channels.len()].clone());
        let stop = Arc::clone(&stop);
        let id = ids[w % ids.len()].clone();
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = if i % 4 == 0 {
                    client
                        .update_user(rename_request(id.clone(), format!("Roll {i}")))
                        .await
                        .map(|_| ())
                } else {
                    client
                        .get_user(GetUserRequest {
                            user_id: id.clone(),
                        })
                        .await
                        .map(|_| ())
                };
                outcomes.push(Outcome { started, result });
                i += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let probe = connect(app.grpc_addr).await;
    app.signal("-TERM");
    let sigterm = Instant::now();
    // Readiness: polled as fast as a client can ask.
    let not_ready_after = loop {
        if readiness(probe.clone(), "user.v1.UserService").await == ServingStatus::NotServing {
            break sigterm.elapsed();
        }
        assert!(sigterm.elapsed() < Duration::from_secs(2), "still ready");
    };
    // A new connection during the drain delay is accepted and served
    // (endpoints take a while to drop the pod).
    tokio::time::sleep(DRAIN / 3).await;
    let mut late = UserServiceClient::new(connect(app.grpc_addr).await);
    late.get_user(GetUserRequest {
        user_id: ids[0].clone(),
    })
    .await
    .expect("a connection opened during the drain delay is served");

    // Clients keep calling until shortly before the listener closes, as
    // they would until the endpoint update reaches them.
    tokio::time::sleep(DRAIN.saturating_sub(sigterm.elapsed() + Duration::from_millis(200))).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    let exit = app
        .wait_exit(DRAIN + TIMEOUT + Duration::from_secs(2))
        .await;
    let exited_after = sigterm.elapsed();

    let before: Vec<_> = outcomes.iter().filter(|o| o.started < sigterm).collect();
    let during: Vec<_> = outcomes.iter().filter(|o| o.started >= sigterm).collect();
    let failed = |set: &[&Outcome]| set.iter().filter(|o| o.result.is_err()).count();
    let first_failure = outcomes
        .iter()
        .find_map(|o| o.result.as_ref().err().map(|s| format!("{s:?}")));
    println!(
        "rolling restart: {} calls started before SIGTERM ({} failed), {} during the drain delay \
         ({} failed); readiness NOT_SERVING after {not_ready_after:?}; exit {:?} after {exited_after:?} \
         (drain_delay {DRAIN:?} + timeout {TIMEOUT:?})",
        before.len(),
        failed(&before),
        during.len(),
        failed(&during),
        exit.and_then(|e| e.code()),
    );
    assert!(before.len() > WORKERS, "the load ran");
    assert_eq!(failed(&before), 0, "first failure: {first_failure:?}");
    assert_eq!(failed(&during), 0, "first failure: {first_failure:?}");
    assert!(
        not_ready_after < Duration::from_millis(100),
        "{not_ready_after:?}"
    );
    assert_eq!(exit.and_then(|e| e.code()), Some(0), "exit 0, in time");
    assert!(exited_after <= DRAIN + TIMEOUT + Duration::from_secs(1));

    for list in lists {
        let (n, done) = list.await.unwrap().expect("list completes");
        assert_eq!(n, LISTED, "every user arrived");
        println!(
            "rolling restart: a ListUsers stream open at SIGTERM completed {:?} after it",
            done - sigterm
        );
        assert!(done > sigterm + DRAIN, "it outlived the drain delay");
    }
    for watch in watches {
        let (code, at) = watch.await.unwrap();
        assert_eq!(code, Some(Code::Unavailable), "watchers told to reconnect");
        assert!(at >= sigterm + DRAIN, "not before the drain delay");
    }
}
