//! Shared pieces of the benchmark binaries: the `user.v1` contract (the
//! same generated crate the service uses), the seed file reader and a
//! minimal flag parser.

use std::{collections::HashMap, fs::File, io::BufRead, io::BufReader, path::Path};

pub use user_service_api::v1 as pb;

/// One line of the seed file (JSON Lines). The password hash is not needed
/// by the baselines, so it is not read.
#[derive(serde::Deserialize)]
struct SeedUser {
    id: String,
    email: String,
    name: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// Reads a seed file into `pb::User`s stamped with `now`.
pub fn load_seed(path: &Path, now: prost_types::Timestamp) -> Result<Vec<pb::User>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let seed: SeedUser = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let status = match seed.status.as_deref() {
            Some("inactive") => pb::UserStatus::Inactive,
            _ => pb::UserStatus::Active,
        };
        users.push(pb::User {
            id: seed.id,
            email: seed.email,
            name: seed.name,
            status: status as i32,
            created_at: Some(now),
            updated_at: Some(now),
            roles: seed.roles.unwrap_or_else(|| vec!["user".to_owned()]),
        });
    }
    Ok(users)
}

/// `--key value` flags, plus everything after `--` as a trailing command.
pub struct Flags {
    values: HashMap<String, String>,
    pub rest: Vec<String>,
}

impl Flags {
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut rest = Vec::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if arg == "--" {
                rest.extend(args.by_ref());
                break;
            }
            let Some(key) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let value = args
                .next()
                .ok_or_else(|| format!("--{key} needs a value"))?;
            values.insert(key.to_owned(), value);
        }
        Ok(Self { values, rest })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn required(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| format!("--{key} is required"))
    }

    pub fn number<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: not a number: {v:?}")),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (or never, if neither can be installed).
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
