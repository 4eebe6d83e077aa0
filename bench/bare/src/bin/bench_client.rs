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
//!   bench-client list --addr 127.0.0.1:50051 --timeout-s 300

use std::{
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
            _ => Err("usage: bench-client startup|list|create --addr HOST:PORT ...".to_owned()),
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
        let started = Instant::now();
        let mut stream = client
            .list_users(ListUsersRequest {
                page_size: 0,
                page_token: String::new(),
            })
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
