//! `store.seed_file`: users loaded into the memory store at startup, for
//! demos, load tests and benchmarks (a million users without a million
//! password hashes).
//!
//! JSON Lines, one user per line:
//! `{"id":"<uuid>","email":"a@example.com","name":"A","password_hash":"$argon2id$..."}`
//! with optional `"status": "active" | "inactive"` (default active) and
//! `"roles": [...]` (default `["user"]`). Every field is validated as the
//! API would validate it; the first bad line stops startup with its line
//! number. The hash is checked to be a PHC string, never a password.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use serde::Deserialize;
use time::OffsetDateTime;

use super::{MemoryStore, StoreError};
use crate::domain::{Email, NewUser, UserId, UserName, UserStatus};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedUser {
    id: String,
    email: String,
    name: String,
    password_hash: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// Loads every line of `path` into `store`; returns how many users.
pub fn load(store: &MemoryStore, path: &Path) -> Result<usize, StoreError> {
    let file = File::open(path)
        .map_err(|e| StoreError::Internal(format!("store.seed_file {}: {e}", path.display())))?;
    let now = OffsetDateTime::now_utc();
    let mut count = 0;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let at = |message: String| {
            StoreError::Internal(format!(
                "store.seed_file {} line {}: {message}",
                path.display(),
                index + 1
            ))
        };
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let seed: SeedUser = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let user = new_user(seed, now).map_err(at)?;
        store.insert_seed(user).map_err(|e| at(e.to_string()))?;
        count += 1;
    }
    Ok(count)
}

fn new_user(seed: SeedUser, now: OffsetDateTime) -> Result<NewUser, String> {
    let invalid = |e: crate::domain::ValidationError| e.to_string();
    if argon2::password_hash::PasswordHash::new(&seed.password_hash).is_err() {
        return Err("password_hash: must be a PHC string (e.g. $argon2id$...)".into());
    }
    let status = match seed.status.as_deref() {
        None => UserStatus::Active,
        Some(raw) => UserStatus::from_stored(raw)
            .ok_or_else(|| format!("status: {raw:?} is not \"active\" or \"inactive\""))?,
    };
    Ok(NewUser {
        id: UserId::parse("id", &seed.id).map_err(invalid)?,
        email: Email::parse(&seed.email).map_err(invalid)?,
        name: UserName::parse(&seed.name).map_err(invalid)?,
        password_hash: seed.password_hash,
        status,
        roles: seed.roles.unwrap_or_else(|| vec!["user".to_owned()]),
        created_at: now,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::domain::UserStore;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    fn file(lines: &[String]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    #[tokio::test]
    async fn loads_users_and_refuses_bad_lines_by_number() {
        let id = uuid::Uuid::now_v7();
        let good = format!(
            r#"{{"id":"{id}","email":"Seed@Example.com","name":"Seed","password_hash":"{HASH}","status":"inactive"}}"#
        );
        let store = MemoryStore::new(16);
        let f = file(&[good.clone(), String::new()]);
        assert_eq!(load(&store, f.path()).unwrap(), 1);
        let user = store.get(UserId::from_uuid(id)).await.unwrap();
        assert_eq!(user.status, UserStatus::Inactive);
        assert_eq!(user.roles, vec!["user".to_owned()]);

        let other = uuid::Uuid::now_v7();
        for (bad, says) in [
            (good.clone(), "appears twice"),
            (
                format!(
                    r#"{{"id":"{other}","email":"x@example.com","name":"X","password_hash":"hunter2"}}"#
                ),
                "PHC",
            ),
            (
                format!(r#"{{"id":"{other}","email":"nope","name":"X","password_hash":"{HASH}"}}"#),
                "email",
            ),
            ("{not json".to_owned(), "line 1"),
        ] {
            let f = file(&[bad]);
            let err = load(&MemoryStore::new(16), f.path())
                .and_then(|_| load(&store, f.path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says) && err.contains("line 1"), "{err}");
            assert!(!err.contains("hunter2"), "a secret in {err}");
        }
    }
}
