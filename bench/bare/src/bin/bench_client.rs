//! Small clients the harness needs that load generators do not provide.
//!
//! `startup`: starts a server command and polls it every millisecond until
//! it first answers (gRPC health `SERVING` for a service name, or a
//! successful GetUser for servers without health), then prints
//! `{"pid":N,"startup_ms":X}` and stays the server's parent until it exits.
//!
//!   bench-client startup --addr 127.0.0.1:50051 --check health \
//!     --service user.v1.UserService --log server.log -- taskset -c 0 server ...
//!   bench-client startup --addr ... --check get --user-id <id> --log ... -- ...
//!
//! `create`: one CreateUser call (for a server that was started without a
//! seed file); prints `{"id":"..."}`.
//!
//!   bench-client create --addr 127.0.0.1:50051 --email a@example.com --name A
//!
//! `list`: one ListUsers call for every user; prints
//! `{"users":N,"seconds":S,"code":"OK"}`.
//!
//!   bench-client list --addr 127.0.0.1:50051 --timeout-s 300 [--token JWT]
//!
//! (`--token`: sent as `authorization: Bearer JWT`, for a server with
//! authentication on; ListUsers is admin-only there.)
//!
//! `probe`: open-loop GetUser calls at `--rate` per second and gRPC health
//! checks at `--health-rate` per second (alternating `""` and
//! `user.v1.UserService`) for `--seconds`, each call on a schedule of its
//! own whether or not earlier ones have answered, so it sees what a load
//! generator's calls see; prints per gRPC code the count and latency
//! percentiles (from the call's start to its status). For what a load
//! generator cannot tell: h2load sees HTTP 200 for OK and for
//! RESOURCE_EXHAUSTED alike (gRPC puts the code in trailers).
//!
//!   bench-client probe --addr 127.0.0.1:50051 --user-id <id> --rate 1000 \
//!     --health-rate 50 --seconds 10 --timeout-ms 5000
//!
//! `--method create` sends CreateUser calls instead (an email of their own
//! each, so each costs one argon2id hash); `--closed N` runs N loops that
//! call again as soon as the last call answered instead of `--rate`. The
//! answer's `"get"` holds the calls of either method. `--connections N`
//! spreads the calls over N connections in turn, as a population of
//! clients would (the server takes `grpc.max_concurrent_streams` calls
//! per connection at once; one connection's excess waits in the client).

use std::{
    collections::BTreeMap,
    fs::File,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use bench_bare::{
    pb::{
        user_service_client::UserServiceClient, CreateUserRequest, GetUserRequest, ListUsersRequest,
    },
    terminated, Flags,
};
use tokio::process::Command;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let result = match Flags::parse(args) {
        Err(e) => Err(e),
        Ok(flags) => match command.as_str() {
            "startup" => startup(flags).await,
            "list" => list(flags).await,
            "create" => create(flags).await,
            "probe" => probe(flags).await,
            _ => {
                Err("usage: bench-client startup|list|create|probe --addr HOST:PORT ...".to_owned())
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-client: {e}");
            ExitCode::from(2)
        }
    }
}

fn endpoint(addr: &str, timeout: Duration) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("--addr: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout))
}

enum Check {
    Health(String),
    Get(String),
}

/// One readiness probe. A failed call drops the channel so the next attempt
/// connects afresh instead of waiting for a reconnect backoff.
async fn answers(endpoint: &Endpoint, channel: &mut Option<Channel>, check: &Check) -> bool {
    let ch = match channel {
        Some(ch) => ch.clone(),
        None => match endpoint.connect().await {
            Ok(ch) => {
                *channel = Some(ch.clone());
                ch
            }
            Err(_) => return false,
        },
    };
    let ok = match check {
        Check::Health(service) => HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map(|r| r.get_ref().status == ServingStatus::Serving as i32),
        Check::Get(id) => UserServiceClient::new(ch)
            .get_user(GetUserRequest {
                user_id: id.clone(),
            })
            .await
            .map(|_| true),
    };
    match ok {
        Ok(serving) => serving,
        Err(_) => {
            *channel = None;
            false
        }
    }
}

async fn startup(flags: Flags) -> Result<ExitCode, String> {
    let addr = flags.required("addr")?;
    let check = match flags.required("check")? {
        "health" => Check::Health(flags.get("service").unwrap_or("").to_owned()),
        "get" => Check::Get(flags.required("user-id")?.to_owned()),
        other => return Err(format!("--check: health or get, not {other:?}")),
    };
    let timeout = Duration::from_millis(flags.number("timeout-ms", 60_000u64)?);
    let log = File::create(flags.required("log")?).map_err(|e| format!("--log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| format!("--log: {e}"))?;
    let (program, args) = flags
        .rest
        .split_first()
        .ok_or("the server command follows --")?;
    let endpoint = endpoint(addr, Duration::from_millis(200))?;

    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    println!("{{\"pid\":{pid}}}");

    let mut channel = None;
    let startup_ms = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("server exited during startup: {status}"));
        }
        if answers(&endpoint, &mut channel, &check).await {
            break started.elapsed().as_secs_f64() * 1e3;
        }
        if started.elapsed() > timeout {
            let _ = child.kill().await;
            return Err(format!("no answer from {addr} within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    drop(channel);
    println!("{{\"pid\":{pid},\"startup_ms\":{startup_ms:.3}}}");

    // Stay the parent: the harness signals the server by pid and reads its
    // exit here; if the harness stops us instead, the server goes too.
    tokio::select! {
        status = child.wait() => {
            let code = status.map_err(|e| e.to_string())?.code().unwrap_or(1);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        () = terminated() => {
            let _ = child.kill().await;
            Ok(ExitCode::from(1))
        }
    }
}

async fn list(flags: Flags) -> Result<ExitCode, String> {
    let addr = flags.required("addr")?;
    let limit = Duration::from_secs(flags.number("timeout-s", 300u64)?);
    let run = async {
        let channel = endpoint(addr, limit)?
            .connect()
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut client = UserServiceClient::new(channel).max_decoding_message_size(16 << 20);
        let mut request = tonic::Request::new(ListUsersRequest {
            page_size: 0,
            page_token: String::new(),
        });
        if let Some(token) = flags.get("token") {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "--token: not a header value".to_owned())?;
            request.metadata_mut().insert("authorization", value);
        }
        let started = Instant::now();
        let mut stream = client
            .list_users(request)
            .await
            .map_err(|s| format!("{:?}", s.code()))?
            .into_inner();
        let mut users = 0u64;
        let code = loop {
            match stream.message().await {
                Ok(Some(_)) => users += 1,
                Ok(None) => break "OK".to_owned(),
                Err(s) => break format!("{:?}", s.code()),
            }
        };
        Ok::<_, String>((users, started.elapsed().as_secs_f64(), code))
    };
    let (users, seconds, code) = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("ListUsers did not finish within {limit:?}"))??;
    println!("{{\"users\":{users},\"seconds\":{seconds:.6},\"code\":\"{code}\"}}");
    Ok(if code == "OK" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn create(flags: Flags) -> Result<ExitCode, String> {
    let addr = flags.required("addr")?;
    let channel = endpoint(addr, Duration::from_secs(10))?
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let user = UserServiceClient::new(channel)
        .create_user(CreateUserRequest {
            email: flags.required("email")?.to_owned(),
            name: flags.required("name")?.to_owned(),
            password: flags
                .get("password")
                .unwrap_or("correct horse battery")
                .to_owned(),
        })
        .await
        .map_err(|s| format!("CreateUser: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!("{{\"id\":\"{}\"}}", user.id);
    Ok(ExitCode::SUCCESS)
}

/// One answered (or timed-out) probe call: its gRPC code and latency.
type Outcome = (String, Duration);

/// Latency figures of one group of outcomes, as a JSON object.
fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort_unstable();
    let pct = |p: f64| {
        // Nearest rank, as bench.py's percentiles().
        let rank = (p * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1e3
    };
    format!(
        "{{\"count\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    )
}

fn by_code(outcomes: Vec<Outcome>) -> String {
    let mut groups: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for (code, latency) in outcomes {
        groups.entry(code).or_default().push(latency);
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(code, latencies)| format!("\"{code}\":{}", summary(latencies)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Calls `call` every 1/rate seconds for `seconds`, each in a task of its
/// own, and collects the outcomes once the last has answered.
async fn open_loop<F, Fut>(rate: f64, seconds: f64, call: F) -> Vec<Outcome>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = String> + 'static,
{
    if rate <= 0.0 {
        return Vec::new();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Keep the schedule: calls that fell behind are sent at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while tick.tick().await < until {
        let tx = tx.clone();
        let fut = call(n);
        n += 1;
        tokio::task::spawn_local(async move {
            let started = Instant::now();
            let code = fut.await;
            let _ = tx.send((code, started.elapsed()));
        });
    }
    drop(tx);
    let mut outcomes = Vec::new();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
    }
    outcomes
}

/// Runs `workers` loops, each calling `call` again as soon as the last call
/// answered, for `seconds`: a closed loop.
async fn closed_loop<F, Fut>(workers: usize, seconds: f64, call: F) -> Vec<Outcome>
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = String> + 'static,
{
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut loops = Vec::new();
    for _ in 0..workers {
        let (call, next) = (call.clone(), next.clone());
        loops.push(tokio::task::spawn_local(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < until {
                let n = next.get();
                next.set(n + 1);
                let started = Instant::now();
                let code = call(n).await;
                outcomes.push((code, started.elapsed()));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for handle in loops {
        outcomes.extend(handle.await.unwrap_or_default());
    }
    outcomes
}

async fn probe(flags: Flags) -> Result<ExitCode, String> {
    let addr = flags.required("addr")?;
    let user_id = flags.required("user-id")?.to_owned();
    let method = flags.get("method").unwrap_or("get").to_owned();
    if method != "get" && method != "create" {
        return Err(format!("--method: get or create, not {method:?}"));
    }
    let rate: f64 = flags.number("rate", 1000.0)?;
    let closed: usize = flags.number("closed", 0usize)?;
    let health_rate: f64 = flags.number("health-rate", 50.0)?;
    let seconds: f64 = flags.number("seconds", 10.0)?;
    let timeout = Duration::from_millis(flags.number("timeout-ms", 5000u64)?);
    // Health on a connection of its own, as the kubelet's probes are.
    let connect = |what: &'static str| {
        let endpoint = endpoint(addr, timeout);
        async move {
            endpoint?
                .connect()
                .await
                .map_err(|e| format!("connect {addr} ({what}): {e}"))
        }
    };
    let connections: usize = flags.number("connections", 1usize)?;
    let mut users = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        users.push(UserServiceClient::new(connect("users").await?));
    }
    let health = HealthClient::new(connect("health").await?);
    let pid = std::process::id();
    // GetUser of one user, or CreateUser with an email of its own per call
    // (each costs one argon2id hash).
    let call = move |n: u64| {
        // The call number picks the connection: round robin.
        let mut client = users[(n % users.len() as u64) as usize].clone();
        let (method, user_id) = (method.clone(), user_id.clone());
        async move {
            let answer = if method == "create" {
                client
                    .create_user(CreateUserRequest {
                        email: format!("probe-{pid}-{n}@example.com"),
                        name: "Probe".to_owned(),
                        password: "correct horse battery".to_owned(),
                    })
                    .await
                    .map(|_| ())
            } else {
                client
                    .get_user(GetUserRequest { user_id })
                    .await
                    .map(|_| ())
            };
            match answer {
                Ok(()) => "OK".to_owned(),
                Err(s) => format!("{:?}", s.code()),
            }
        }
    };

    let local = tokio::task::LocalSet::new();
    let (calls, checks) = local
        .run_until(async {
            let calls = async {
                if closed > 0 {
                    closed_loop(closed, seconds, call).await
                } else {
                    open_loop(rate, seconds, call).await
                }
            };
            let checks = open_loop(health_rate, seconds, |n| {
                let mut client = health.clone();
                let service = if n % 2 == 0 {
                    ""
                } else {
                    "user.v1.UserService"
                };
                let request = HealthCheckRequest {
                    service: service.to_owned(),
                };
                async move {
                    match client.check(request).await {
                        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                            "SERVING".to_owned()
                        }
                        Ok(r) => format!("status {}", r.get_ref().status),
                        Err(s) => format!("{:?}", s.code()),
                    }
                }
            });
            tokio::join!(calls, checks)
        })
        .await;
    println!(
        "{{\"get\":{},\"health\":{}}}",
        by_code(calls),
        by_code(checks)
    );
    Ok(ExitCode::SUCCESS)
}
