//! Settings values that must never be printed: secrets and the store URL
//! (which may carry a database password). `Debug`, `Display` and
//! `Serialize` (how `--print-config` shows settings) all redact; only an
//! explicit `expose()` hands out the value.

use std::{fmt, path::Path};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// Reads a secret mounted as a file. The error names the key and the path,
/// never the content.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{key}: cannot read {}: {e}", path.display())))?;
    // `echo secret > file` and editors add a newline the secret never had.
    let text = text.trim_end();
    if text.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{key}: {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(text))
}

/// A secret string (JWT secret, password): `Debug` and `Serialize` show
/// `***`, there is no `Display`, and only [`Secret::expose`] hands out the
/// value, so it cannot reach a log line or `--print-config` by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: only for the code that needs it (key setup, a
    /// request header), never for formatting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// `store.url`, parsed once into the backend it names. The PostgreSQL URL
/// may carry a password, so it never prints one.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreUrl {
    /// `memory://`: the in-process store (the default).
    #[default]
    Memory,
    /// `postgres://` or `postgresql://`, kept as given for the driver.
    Postgres(String),
}

impl StoreUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.split_once("://") {
            Some(("memory", "")) => Ok(Self::Memory),
            Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => {
                Ok(Self::Postgres(raw.to_owned()))
            }
            _ => Err("expected memory:// or postgres://user:password@host:port/database".into()),
        }
    }

    /// The full URL, password included: only for handing to the driver.
    pub fn expose(&self) -> &str {
        match self {
            Self::Memory => "memory://",
            Self::Postgres(url) => url,
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = self.expose();
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        // userinfo ends at the last '@' before the first '/'.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                let masked = if userinfo.contains(':') { ":***" } else { "" };
                // A password may also hide in the query (`?password=`).
                let tail = redact_query_password(tail);
                format!("{scheme}://{user}{masked}@{host}{tail}")
            }
            None => format!("{scheme}://{authority}{}", redact_query_password(tail)),
        }
    }
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

// Serialising is how `--print-config` shows settings, so it redacts; the
// config loader never serialises a URL it read (defaults only), so nothing
// is lost.
impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        StoreUrl::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        let url = StoreUrl::parse("postgres://app:s3cr3t@db:5432/users?sslmode=require").unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db:5432/users?sslmode=require"
        );
        assert!(!format!("{url:?} {url}").contains("s3cr3t"));
        let url = StoreUrl::parse("postgres://app:p%40ss@w@rd@db/users").unwrap();
        assert!(!url.redacted().contains("rd"), "{}", url.redacted());
        let url = StoreUrl::parse("postgres://db/users?user=app&password=s3cr3t").unwrap();
        assert_eq!(url.redacted(), "postgres://db/users?user=app&password=***");
        assert_eq!(StoreUrl::Memory.redacted(), "memory://");
    }

    #[test]
    fn store_url_scheme_is_checked() {
        assert!(StoreUrl::parse("memory://").is_ok());
        assert!(StoreUrl::parse("postgresql://db/users").is_ok());
        assert!(StoreUrl::parse("mysql://db/users").is_err());
        assert!(StoreUrl::parse("memory").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
