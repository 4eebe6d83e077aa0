//! A database outage under a steady stream of CreateUser and GetUser, on a
//! PostgreSQL cluster of the test's own (`pg::OwnCluster`): stopped for a
//! few seconds (a crash, a failover), then frozen with SIGSTOP (a hung
//! host). Calls must fail fast with UNAVAILABLE, readiness must drop,
//! service must come back within 5 s of the database, and every user whose
//! creation was acknowledged must be readable afterwards.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tonic::{Code, Request};
use user_service::{
    config::StoreUrl,
    pb::{user_service_client::UserServiceClient, GetUserRequest},
};

use crate::{helpers::*, pg::OwnCluster};

const ACQUIRE: Duration = Duration::from_millis(500);
const OUTAGE: Duration = Duration::from_secs(3);

/// One call of the load.
struct Sample {
    at: Instant,
    took: Duration,
    create: bool,
    code: Code,
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `pg_ctl stop -m fast`, later started again.
    Stopped,
    /// SIGSTOP to the postmaster and every backend, later SIGCONT.
    Hung,
}

async fn outage(what: Kind) {
    let (kind, tag) = match what {
        Kind::Stopped => ("stopped", "stopped"),
        Kind::Hung => ("hung (SIGSTOP)", "hung"),
    };
    let Some(cluster) = OwnCluster::start_new() else {
        return;
    };
    let mut settings = test_settings();
    settings.store.url = StoreUrl::parse(&cluster.url()).unwrap();
    settings.store.acquire_timeout = ACQUIRE;
    // A hung database never answers, and its statement_timeout cannot
    // fire: the store's own bound on a query is what ends those calls.
    settings.store.statement_timeout = ACQUIRE;
    settings.health.check_timeout = ACQUIRE;
    let app = spawn_app_with(settings).await;

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let mut client = UserServiceClient::new(app.channel.clone());
        let (samples, created, stop) = (samples.clone(), created.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Two reads per write; writes cost a hash.
                let create = i % 3 == 0 || created.lock().unwrap().is_empty();
                let at = Instant::now();
                let code = if create {
                    let mut request = Request::new(create_request(&format!("{tag}{w}-{i}")));
                    request.set_timeout(Duration::from_secs(10));
                    match client.create_user(request).await {
                        Ok(user) => {
                            created.lock().unwrap().push(user.into_inner().id);
                            Code::Ok
                        }
                        Err(status) => status.code(),
                    }
                } else {
                    let id = {
                        let ids = created.lock().unwrap();
                        ids[i % ids.len()].clone()
                    };
                    let mut request = Request::new(GetUserRequest { user_id: id });
                    request.set_timeout(Duration::from_secs(10));
                    match client.get_user(request).await {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    }
                };
                samples.lock().unwrap().push(Sample {
                    at,
                    took: at.elapsed(),
                    create,
                    code,
                });
                i += 1;
                if code != Code::Ok {
                    // A client backing off a little, as it should.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The load is under way once a user exists (a slow machine hashes
    // slowly): the reads need one, and the outage must catch both kinds.
    let warmed = Instant::now();
    while created.lock().unwrap().is_empty() {
        assert!(
            warmed.elapsed() < Duration::from_secs(30),
            "no user created before the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Hung: some queries must be inside the database when it freezes. A
    // lock held from the side makes reads wait there; frozen before their
    // statement_timeout, they can only be ended by the service.
    let mut side = None;
    let mut stuck = Vec::new();
    if what == Kind::Hung {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&cluster.url()).await.unwrap();
        conn.execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        side = Some(conn);
        let id = created.lock().unwrap()[0].clone();
        for _ in 0..4 {
            let mut client = UserServiceClient::new(app.channel.clone());
            let id = id.clone();
            stuck.push(tokio::spawn(async move {
                let mut request = Request::new(GetUserRequest { user_id: id });
                request.set_timeout(Duration::from_secs(10));
                let at = Instant::now();
                let result = client.get_user(request).await;
                (result.map(|_| ()).map_err(|s| s.code()), at.elapsed())
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_at = Instant::now();
    match what {
        Kind::Stopped => cluster.stop(),
        Kind::Hung => cluster.signal_all("-STOP"),
    }
    // Readiness follows within a few health checks.
    let mut not_ready_after = None;
    while down_at.elapsed() < OUTAGE {
        if not_ready_after.is_none() && http_get(app.admin_addr, "/readyz").await.0 == 503 {
            not_ready_after = Some(down_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match what {
        Kind::Stopped => cluster.start(),
        Kind::Hung => cluster.signal_all("-CONT"),
    }
    let up_at = Instant::now();
    // The side lock goes, so the database is as good as before.
    drop(side);
    // Back: the first successful call and readiness, measured from the
    // moment the database answers again.
    let mut ready_after = None;
    let mut served_after = None;
    while up_at.elapsed() < Duration::from_secs(10)
        && (ready_after.is_none() || served_after.is_none())
    {
        if ready_after.is_none() && http_get(app.admin_addr, "/readyz").await.0 == 200 {
            ready_after = Some(up_at.elapsed());
        }
        if served_after.is_none()
            && samples
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.at >= up_at && s.code == Code::Ok)
        {
            served_after = Some(up_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let all_failures: Vec<&Sample> = samples.iter().filter(|s| s.code != Code::Ok).collect();
    // Calls already inside the database when it went away end at the
    // store's bound at worst (acquire + statement timeout + slack); the
    // ones that come after must fail within the acquire timeout.
    let (in_flight, failures): (Vec<&Sample>, Vec<&Sample>) =
        all_failures.iter().partition(|s| s.at < down_at);
    let bound = ACQUIRE + ACQUIRE + Duration::from_millis(500);
    let mut stuck_results = Vec::new();
    for call in stuck {
        stuck_results.push(call.await.unwrap());
    }
    let in_flight_slowest = in_flight
        .iter()
        .map(|s| s.took)
        .chain(stuck_results.iter().map(|(_, took)| *took))
        .max()
        .unwrap_or_default();
    let codes: std::collections::BTreeSet<String> = all_failures
        .iter()
        .map(|s| format!("{:?}", s.code))
        .chain(stuck_results.iter().map(|(r, _)| match r {
            Ok(()) => "Ok".to_owned(),
            Err(code) => format!("{code:?}"),
        }))
        .collect();
    // What a create costs when the database is fine (hashing, its queue):
    // a failed one may take that plus the store's bound.
    let create_ok_p99 = p99(samples
        .iter()
        .filter(|s| s.create && s.code == Code::Ok && s.at + s.took < down_at)
        .map(|s| s.took)
        .collect());
    let read_p99 = p99(failures
        .iter()
        .filter(|s| !s.create)
        .map(|s| s.took)
        .collect());
    let create_p99 = p99(failures
        .iter()
        .filter(|s| s.create)
        .map(|s| s.took)
        .collect());
    let ids = created.lock().unwrap().clone();
    println!(
        "{kind}: {} calls, {} failed ({codes:?}); started during the outage: failed GetUser p99 \
         {read_p99:?}, failed CreateUser p99 {create_p99:?} (a successful CreateUser's p99 before \
         the outage: {create_ok_p99:?}); {} calls inside the database when it went away, slowest \
         {in_flight_slowest:?} (bound {bound:?}); store.acquire_timeout {ACQUIRE:?}; /readyz 503 \
         after {not_ready_after:?}; after the database came back: ready after {ready_after:?}, \
         first OK call after {served_after:?}; {} acknowledged users, all readable",
        samples.len() + stuck_results.len(),
        all_failures.len() + stuck_results.len(),
        in_flight.len() + stuck_results.len(),
        ids.len()
    );
    assert!(!failures.is_empty(), "the outage was noticed");
    // Every failure is the retryable UNAVAILABLE, never DEADLINE_EXCEEDED
    // at the 10 s deadline nor INTERNAL.
    assert_eq!(codes.into_iter().collect::<Vec<_>>(), ["Unavailable"]);
    // The targets are store.acquire_timeout + 100 ms for calls that start
    // during the outage and the store's bound for calls caught inside the
    // database; the asserts leave room for a busy 2-core machine (the
    // figures above are what to compare with the targets).
    let slack = Duration::from_millis(500);
    assert!(read_p99 < ACQUIRE + slack, "{read_p99:?}");
    // A create hashes before it reaches the store.
    assert!(
        create_p99 < create_ok_p99 + ACQUIRE + slack,
        "{create_p99:?} against {create_ok_p99:?}"
    );
    for (result, took) in &stuck_results {
        assert_eq!(*result, Err(Code::Unavailable));
        assert!(
            *took < bound + slack,
            "a call inside a hung database: {took:?}"
        );
    }
    assert!(
        not_ready_after.is_some_and(|t| t < OUTAGE),
        "readiness dropped"
    );
    let recovered = ready_after.zip(served_after);
    assert!(
        recovered.is_some_and(|(r, s)| r < Duration::from_secs(5) && s < Duration::from_secs(5)),
        "recovered within 5 s: {recovered:?}"
    );

    // Every acknowledged create survived.
    let mut client = UserServiceClient::new(app.channel.clone());
    for id in &ids {
        client
            .get_user(GetUserRequest {
                user_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged user {id} lost: {s:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_calls_fast_and_service_returns_with_it() {
    outage(Kind::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_fails_calls_fast_and_service_returns_with_it() {
    outage(Kind::Hung).await;
}
