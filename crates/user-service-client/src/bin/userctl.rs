//! `userctl`: a command-line client for user.v1.UserService.
//!
//! Prints one JSON object per user or event, so its output pipes into jq.
//! Passwords are read from stdin (or USERCTL_PASSWORD), never from flags,
//! so they do not show up in shell history or `ps`. The bearer token comes
//! from USERCTL_TOKEN (preferred, for the same reason) or --token.

use std::{io::BufRead, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::json;
use user_service_client::{
    pb::{self, UpdateUserRequest, UserEventType, UserStatus},
    ClientConfig, ClientError, ClientTls, Token, UserClient,
};

#[derive(Parser)]
#[command(
    name = "userctl",
    version,
    about = "Command-line client for user.v1.UserService."
)]
struct Cli {
    /// Server address; https://... for TLS.
    #[arg(long, env = "USERCTL_ADDR", default_value = "http://localhost:50051")]
    addr: String,
    /// PEM CA certificate to verify the server with (implies TLS).
    #[arg(long, env = "USERCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for mTLS (with --key; implies TLS).
    #[arg(long, env = "USERCTL_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "USERCTL_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the
    /// host in --addr (e.g. through kubectl port-forward).
    #[arg(long)]
    server_name: Option<String>,
    /// Deadline for each call (streams: for the whole stream), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Bearer JWT sent with every call (e.g. from `user-service token`).
    /// Prefer the environment variable: flags show up in `ps`.
    #[arg(long, env = "USERCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a user; the password is read from USERCTL_PASSWORD or stdin.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
    },
    /// Show one user.
    Get { id: String },
    /// Change a user's name and/or status.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        status: Option<Status>,
    },
    /// Delete a user.
    Delete { id: String },
    /// Stream users in id order.
    List {
        /// At most this many (0 = all).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Resume after this user id.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Follow changes (all users, or the given ids) until interrupted,
    /// reconnecting by itself from the last revision printed.
    Watch {
        ids: Vec<String>,
        /// Replay every change after this revision first (the `revision`
        /// of the last line a previous run printed); 0 = live only.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// End with the server's status when it ends the watch (e.g.
        /// UNAVAILABLE while it drains) instead of reconnecting and
        /// resuming from the last revision.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Status {
    Active,
    Inactive,
}

fn user_json(user: &pb::User) -> serde_json::Value {
    let status = UserStatus::try_from(user.status).map_or("UNKNOWN", |s| s.as_str_name());
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string);
    json!({
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "status": status,
        "roles": user.roles,
        "created_at": ts(&user.created_at),
        "updated_at": ts(&user.updated_at),
    })
}

fn read_password() -> Result<String, ClientError> {
    if let Ok(password) = std::env::var("USERCTL_PASSWORD") {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
        ClientError::Invalid(vec![("password".into(), format!("cannot read stdin: {e}"))])
    })?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let tls = if cli.ca_file.is_some() || cli.cert.is_some() || cli.server_name.is_some() {
        let mut tls = ClientTls::from_files(
            cli.ca_file.as_deref(),
            cli.cert.as_deref(),
            cli.key.as_deref(),
        )?;
        tls.server_name = cli.server_name;
        Some(tls)
    } else {
        None
    };
    let client = UserClient::connect(ClientConfig {
        endpoint: cli.addr,
        request_timeout: cli.timeout,
        token: cli.token.filter(|t| !t.is_empty()).map(Token::new),
        tls,
        ..ClientConfig::default()
    })
    .await?;
    match cli.command {
        Cmd::Create { email, name } => {
            let password = read_password()?;
            println!(
                "{}",
                user_json(&client.create_user(&email, &name, &password).await?)
            );
        }
        Cmd::Get { id } => println!("{}", user_json(&client.get_user(&id).await?)),
        Cmd::Update { id, name, status } => {
            let mut paths = Vec::new();
            if name.is_some() {
                paths.push("name".to_owned());
            }
            if status.is_some() {
                paths.push("status".to_owned());
            }
            let status = match status {
                Some(Status::Active) => UserStatus::Active,
                Some(Status::Inactive) => UserStatus::Inactive,
                None => UserStatus::Unspecified,
            };
            let request = UpdateUserRequest {
                user_id: id,
                name: name.unwrap_or_default(),
                status: status as i32,
                update_mask: Some(prost_types::FieldMask { paths }),
            };
            println!("{}", user_json(&client.update_user(request).await?));
        }
        Cmd::Delete { id } => {
            client.delete_user(&id).await?;
            println!("{}", json!({ "deleted": id }));
        }
        Cmd::List {
            page_size,
            page_token,
        } => {
            let mut users = client
                .list_users(page_size, &page_token, cli.timeout)
                .await?;
            while let Some(user) = users.next().await {
                println!("{}", user_json(&user?));
            }
        }
        Cmd::Watch { ids, since, once } => {
            let events = if once {
                futures_util::future::Either::Left(
                    client
                        .watch_users_since(ids, since, Some(cli.timeout))
                        .await?,
                )
            } else {
                futures_util::future::Either::Right(client.follow_users(ids, since))
            };
            futures_util::pin_mut!(events);
            while let Some(event) = events.next().await {
                let event = event?;
                let kind =
                    UserEventType::try_from(event.r#type).map_or("UNKNOWN", |t| t.as_str_name());
                println!(
                    "{}",
                    json!({
                        "revision": event.revision,
                        "type": kind,
                        "user": event.user.as_ref().map(user_json),
                        "occurred_at": event.occurred_at.map(|t| t.to_string()),
                    })
                );
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("userctl: {err}");
            ExitCode::FAILURE
        }
    }
}
