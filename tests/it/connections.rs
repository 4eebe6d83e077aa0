//! Connection rebalancing: gRPC pins a client to one HTTP/2 connection, so
//! `grpc.max_connection_age` closes connections gracefully (GOAWAY) to
//! make long-lived clients reconnect, and spread over new replicas. That
//! must cost the client no failed call.

use std::time::{Duration, Instant};

use user_service_client::{
    never_sent,
    pb::{user_service_client::UserServiceClient, GetUserRequest},
    ClientConfig, UserClient,
};

use crate::helpers::*;

#[tokio::test]
async fn an_aged_connection_is_recycled_without_a_failed_call() {
    const RUN: Duration = Duration::from_secs(6);
    let (seed, ids) = seed_file(16);
    let seed_path = seed.path().display().to_string();
    let app = spawn_child(&[
        ("USER_SERVICE__GRPC__MAX_CONNECTION_AGE", "1s"),
        ("USER_SERVICE__GRPC__MAX_CONNECTION_AGE_GRACE", "5s"),
        ("USER_SERVICE__STORE__SEED_FILE", &seed_path),
    ])
    .await;
    let accepted = "user_service_grpc_connections_accepted_total";
    let before = app.metric(accepted).await.expect("the counter exists");

    // Two long-lived clients, 8 calls at a time each: the service's own
    // client library (writes, which it never retries but for requests that
    // were never sent) and a bare tonic channel (reads).
    let ours = UserClient::connect(ClientConfig {
        endpoint: format!("http://{}", app.grpc_addr),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let bare = UserServiceClient::new(connect(app.grpc_addr).await);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..8 {
        let ours = ours.clone();
        let id = ids[w % ids.len()].clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while started.elapsed() < RUN {
                let update = rename_request(id.clone(), format!("Aged {ok}"));
                match ours.update_user(update).await {
                    Ok(_) => ok += 1,
                    Err(err) => failed.push(format!("UserClient: {err}")),
                }
            }
            (ok, failed, 0u64)
        }));
    }
    for w in 0..8 {
        let mut bare = bare.clone();
        let id = ids[w % ids.len()].clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut unsent) = (0u64, Vec::new(), 0u64);
            while started.elapsed() < RUN {
                let get = GetUserRequest {
                    user_id: id.clone(),
                };
                match bare.get_user(get).await {
                    Ok(_) => ok += 1,
                    // Never processed by the server (unsent, or refused by
                    // the GOAWAY): exactly what our client sends again.
                    Err(status) if never_sent(&status) => unsent += 1,
                    Err(status) => failed.push(format!("bare: {status:?}")),
                }
            }
            (ok, failed, unsent)
        }));
    }
    let (mut ours_ok, mut bare_ok, mut failed, mut unsent) = (0, 0, Vec::new(), 0);
    for (i, worker) in workers.into_iter().enumerate() {
        let (o, f, u) = worker.await.unwrap();
        if i < 8 {
            ours_ok += o;
        } else {
            bare_ok += o;
        }
        failed.extend(f);
        unsent += u;
    }
    let after = app.metric(accepted).await.expect("the counter exists");
    let connections = after - before;
    println!(
        "connection age 1s (±10%), {RUN:?}: {connections} connections accepted; UserClient {ours_ok} \
         updates, bare tonic channel {bare_ok} reads + {unsent} never processed \
         (sent into a closing connection, safe to resend); {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ours_ok > 500 && bare_ok > 500, "the load ran");
    // 6 s at ~1 s per connection and two clients: several reconnects each
    // (two would mean the connections were never recycled).
    assert!(connections >= 6.0, "connections accepted: {connections}");
}

#[tokio::test]
async fn a_stream_that_outlives_the_grace_is_cut_so_the_client_reconnects() {
    let mut settings = test_settings();
    settings.grpc.max_connection_age = Duration::from_millis(500);
    settings.grpc.max_connection_age_grace = Duration::from_millis(500);
    let app = spawn_app_with(settings).await;
    let mut client = UserServiceClient::new(connect(app.grpc_addr).await);
    let started = Instant::now();
    let mut events = client
        .watch_users(user_service::pb::WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    // WatchUsers ignores the GOAWAY (it never ends by itself): the
    // connection is closed at age + grace (±10% jitter on the age).
    let ended = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
    let took = started.elapsed();
    println!(
        "a WatchUsers stream on an aged connection ended after {took:?} (age 500ms + grace 500ms)"
    );
    assert!(
        matches!(ended, Ok(Err(_)) | Ok(Ok(None))),
        "the stream ended: {ended:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "not before age + grace: {took:?}"
    );
    // The same client carries on, on a new connection.
    let status = client
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "served: {status:?}");
}
