//! Slow and hostile readers: a client that stops reading must cost the
//! server bounded memory, whatever it asked for. (Raw hostile HTTP/2
//! frames are in `limits.rs`.) Memory is the child process's VmRSS.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use user_service::pb::{
    user_service_client::UserServiceClient, ListUsersRequest, UpdateUserRequest, WatchUsersRequest,
};

use crate::helpers::*;

const MIB: u64 = 1024;

#[tokio::test]
async fn list_users_over_100k_users_to_readers_that_never_read_keeps_memory_flat() {
    const USERS: usize = 100_000;
    const READERS: usize = 32;
    let (seed, _) = seed_file(USERS);
    let seed_path = seed.path().display().to_string();
    let app = spawn_child(&[("USER_SERVICE__STORE__SEED_FILE", &seed_path)]).await;
    let client = UserServiceClient::new(connect(app.grpc_addr).await);
    // One more reader on a connection of its own: non-reading streams
    // also hold their connection's window, which would starve it.
    let alone = UserServiceClient::new(connect(app.grpc_addr).await);
    let rss_before = app.rss_kib();

    // Each asks for everything and never reads a message: the server may
    // only get as far ahead as HTTP/2 flow control lets it.
    let mut streams = Vec::new();
    for _ in 0..READERS - 1 {
        let stream = client
            .clone()
            .list_users(ListUsersRequest::default())
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    let mut last = alone
        .clone()
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_settled = app.rss_kib();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = app.rss_kib();
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "ListUsers, {USERS} users, {READERS} streams that never read: server RSS {rss_before} KiB \
         -> {rss_settled} KiB after 1 s -> {rss_after} KiB after 3 s ({:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    assert!(growth < 10 * MIB, "grew by {growth} KiB");
    assert!(
        rss_after <= rss_settled + MIB,
        "still growing: {rss_settled} -> {rss_after} KiB"
    );

    // And the streams are alive, not broken: one reader catches up in full.
    let started = Instant::now();
    let read_all = async {
        let mut n = 0;
        while let Some(user) = last.next().await {
            user.expect("no error");
            n += 1;
        }
        n
    };
    let n = tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("read within 30 s");
    assert_eq!(n, USERS);
    println!(
        "one of them then read all {USERS} users in {:?}",
        started.elapsed()
    );
    drop(streams);
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_ended_with_resource_exhausted_and_memory_stays_flat() {
    const UPDATES: usize = 10_000;
    let (seed, ids) = seed_file(100);
    let seed_path = seed.path().display().to_string();
    let app = spawn_child(&[
        ("USER_SERVICE__STORE__SEED_FILE", &seed_path),
        ("USER_SERVICE__STORE__WATCH_BUFFER", "1024"),
    ])
    .await;
    // The watcher's connection has a small window, so the server can get
    // only a few KiB ahead of what it reads.
    let watcher = UserServiceClient::new(connect_small_window(app.grpc_addr, 16 * 1024).await);
    let mut events = watcher
        .clone()
        .watch_users(WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rss_before = app.rss_kib();

    // 10k updates through one bidi stream, on another connection.
    let mut writer = UserServiceClient::new(connect(app.grpc_addr).await);
    let (tx, rx) = mpsc::channel(64);
    let feeder = tokio::spawn(async move {
        for i in 0..UPDATES {
            let update = UpdateUserRequest {
                user_id: ids[i % ids.len()].clone(),
                name: format!("Renamed {i:05}"),
                status: 0,
                update_mask: None,
            };
            if tx.send(update).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut answers = writer
        .user_updates(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut applied = 0;
    while let Some(answer) = answers.next().await {
        answer.expect("update applied");
        applied += 1;
    }
    feeder.await.unwrap();
    assert_eq!(applied, UPDATES);
    let took = started.elapsed();
    let rss_after = app.rss_kib();

    // Now the watcher reads: what flow control let through, then the end.
    let mut received = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(_))) => received += 1,
            Ok(Some(Err(status))) => break Some(status),
            Ok(None) => break None,
            Err(_) => panic!("the watcher was neither fed nor ended"),
        }
    };
    println!(
        "WatchUsers: {UPDATES} updates in {took:?} while a watcher did not read; it then got \
         {received} events and {:?}; server RSS {rss_before} KiB -> {rss_after} KiB ({:+} KiB)",
        ended.as_ref().map(|s| s.code()),
        rss_after as i64 - rss_before as i64
    );
    let status = ended.expect("ended with a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("behind"), "{status:?}");
    assert!(received < UPDATES, "it was dropped, not fed everything");
    assert!(
        rss_after.saturating_sub(rss_before) < 10 * MIB,
        "{rss_before} -> {rss_after} KiB"
    );
}
