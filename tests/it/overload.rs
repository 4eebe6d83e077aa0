//! Overload: calls over `grpc.max_concurrent_requests` are shed at once
//! with RESOURCE_EXHAUSTED (counted like any answer), health is never
//! shed, refusals keep nothing in memory, and CreateUser is refused at once
//! when the password hashing queue is full.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use user_service::pb::{user_service_client::UserServiceClient, GetUserRequest};

use crate::helpers::*;

const LIMIT: usize = 4;

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples
        .get(samples.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// LIMIT BulkCreateUsers streams whose client never half-closes: they hold
/// every permit until [`PermitHolders::release`], so the limit is reached
/// deterministically.
struct PermitHolders {
    calls: Vec<
        tokio::task::JoinHandle<
            Result<tonic::Response<user_service::pb::BulkCreateUsersResponse>, tonic::Status>,
        >,
    >,
    senders: Vec<mpsc::Sender<user_service::pb::CreateUserRequest>>,
}

impl PermitHolders {
    async fn hold_every_permit(
        app: &ChildApp,
        client: &UserServiceClient<tonic::transport::Channel>,
    ) -> Self {
        let mut calls = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..LIMIT {
            let (tx, rx) = mpsc::channel(1);
            let mut c = client.clone();
            calls.push(tokio::spawn(async move {
                c.bulk_create_users(ReceiverStream::new(rx)).await
            }));
            senders.push(tx);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.metric("user_service_grpc_requests_in_flight").await != Some(LIMIT as f64) {
            assert!(Instant::now() < deadline, "the holders never got permits");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { calls, senders }
    }

    /// Half-closes the streams: each ends cleanly, having created nothing,
    /// and gives its permit back.
    async fn release(self) {
        drop(self.senders);
        for call in self.calls {
            let response = call.await.unwrap().expect("bulk call ends cleanly");
            assert_eq!(response.into_inner().created_count, 0);
        }
    }
}

#[tokio::test]
async fn calls_over_the_limit_are_shed_at_once_health_never_and_memory_stays_flat() {
    let app = spawn_child(&[(
        "USER_SERVICE__GRPC__MAX_CONCURRENT_REQUESTS",
        &LIMIT.to_string(),
    )])
    .await;
    let channel = connect(app.grpc_addr).await;
    let client = UserServiceClient::new(channel.clone());
    assert_eq!(
        app.metric("user_service_grpc_max_concurrent_requests")
            .await,
        Some(LIMIT as f64)
    );

    let holders = PermitHolders::hold_every_permit(&app, &client).await;

    // Warm-up, then memory before the burst.
    let get = || GetUserRequest {
        user_id: uuid::Uuid::now_v7().to_string(),
    };
    let status = client.clone().get_user(get()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("grpc.max_concurrent_requests"),
        "{status:?}"
    );
    let rss_before = app.rss_kib();

    // A burst of 4000 calls, 200 at a time: every one refused, quickly.
    let started = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let mut c = client.clone();
                let request = get();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let result = c.get_user(request).await;
                    (
                        result
                            .map(|_| ())
                            .map_err(|s| (s.code(), s.message().to_owned())),
                        t.elapsed(),
                    )
                })
            })
            .collect();
        for call in calls {
            let (result, took) = call.await.unwrap();
            assert!(
                matches!(&result, Err((Code::ResourceExhausted, _))),
                "{result:?}"
            );
            latencies.push(took);
        }
    }
    let burst = started.elapsed();
    // Health, at the limit: never shed.
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "user.v1.UserService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health is never shed")
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
    }
    let rss_after = app.rss_kib();
    let refusal_p99 = p99(latencies);
    println!(
        "overload: 4000 shed calls in {burst:?}, refusal p99 {refusal_p99:?} (200 concurrent), \
         server RSS {rss_before} KiB -> {rss_after} KiB ({:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    // Generous bounds for a busy 2-core machine: a refusal is a few
    // microseconds of server work; the rest is the client and scheduling.
    assert!(refusal_p99 < Duration::from_millis(500), "{refusal_p99:?}");
    assert!(
        rss_after < rss_before + 10 * 1024,
        "refusals must not accumulate: {rss_before} -> {rss_after} KiB"
    );

    // Counted and labelled like any other code.
    let shed = app
        .metric("user_service_grpc_requests_shed_total{grpc_method=\"GetUser\"")
        .await;
    assert_eq!(shed, Some(4001.0));
    let handled = app
        .metric("grpc_server_handled_total{grpc_method=\"GetUser\",grpc_code=\"ResourceExhausted\"")
        .await;
    assert_eq!(handled, Some(4001.0));
    assert_eq!(
        app.metric("user_service_grpc_requests_in_flight").await,
        Some(LIMIT as f64)
    );

    // Letting go: the permits come back and calls are served again.
    holders.release().await;
    let status = client.clone().get_user(get()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "served again: {status:?}");
    assert_eq!(
        app.metric("user_service_grpc_requests_in_flight").await,
        Some(0.0)
    );
}

/// At the Helm chart's 64 streams per connection, 200 calls refused at once
/// on one connection make the server reset some new streams with
/// REFUSED_STREAM: the client reuses a slot the server has not released
/// yet (a raw tonic client sees UNAVAILABLE "h2 protocol error" then).
/// The crate's client retries those, as HTTP/2 allows for a stream the
/// server did not process, even for CreateUser, which it never retries
/// otherwise: every call gets the server's own answer.
#[tokio::test]
async fn the_client_library_retries_streams_refused_at_the_charts_stream_cap() {
    use user_service_client::{ClientConfig, ClientError, UserClient};
    let app = spawn_child(&[
        (
            "USER_SERVICE__GRPC__MAX_CONCURRENT_REQUESTS",
            &LIMIT.to_string(),
        ),
        ("USER_SERVICE__GRPC__MAX_CONCURRENT_STREAMS", "64"),
    ])
    .await;
    let raw = UserServiceClient::new(connect(app.grpc_addr).await);
    let holders = PermitHolders::hold_every_permit(&app, &raw).await;
    let users = UserClient::connect(ClientConfig {
        endpoint: format!("http://{}", app.grpc_addr),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    for round in 0..20 {
        let calls: Vec<_> = (0..200)
            .map(|n| {
                let users = users.clone();
                tokio::spawn(async move {
                    users
                        .create_user(
                            &format!("refused-{round}-{n}@example.com"),
                            "Refused",
                            "correct horse",
                        )
                        .await
                })
            })
            .collect();
        for call in calls {
            match call.await.unwrap() {
                Err(ClientError::Other {
                    code: Code::ResourceExhausted,
                    ..
                }) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
    holders.release().await;
}

#[tokio::test]
async fn streams_hold_a_permit_only_until_their_headers() {
    let mut settings = test_settings();
    settings.grpc.max_concurrent_requests = 1;
    let app = spawn_app_with(settings).await;
    let mut client = app.client.clone();
    // Many more open watchers than the limit...
    let mut watchers = Vec::new();
    for _ in 0..5 {
        watchers.push(
            client
                .watch_users(user_service::pb::WatchUsersRequest::default())
                .await
                .expect("a stream's setup is admitted")
                .into_inner(),
        );
    }
    // ...and unary calls are still served.
    client
        .create_user(create_request("beside-streams"))
        .await
        .unwrap();
}

#[tokio::test]
async fn create_user_is_refused_at_once_when_the_hash_queue_is_full() {
    let mut settings = test_settings();
    settings.limits.password_hash_concurrency = 1;
    settings.limits.password_hash_queue = 1;
    let app = spawn_app_with(settings).await;

    // 24 sign-ups at once against one hashing thread and one queue slot.
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let mut c = app.client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let result = c.create_user(create_request(&format!("q{i}"))).await;
                (result, t.elapsed())
            })
        })
        .collect();
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for call in calls {
        match call.await.unwrap() {
            (Ok(_), took) => ok.push(took),
            (Err(status), took) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("password_hash_queue"),
                    "{status:?}"
                );
                refused.push(took);
            }
        }
    }
    let slowest_ok = ok.iter().max().copied().unwrap_or_default();
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    println!(
        "hash queue: {} created, {} refused; slowest refusal {slowest_refusal:?}, slowest success {slowest_ok:?}",
        ok.len(),
        refused.len()
    );
    assert!(!ok.is_empty(), "some are served");
    assert!(refused.len() >= 10, "a queue of 1 cannot hold 24");
    assert!(
        slowest_refusal < Duration::from_secs(1),
        "refused at once, not after waiting: {slowest_refusal:?}"
    );
    // Served again once the queue drains.
    app.client
        .clone()
        .create_user(create_request("after-queue"))
        .await
        .unwrap();
}
