//! Key material: where the keys that verify (and, for `user-service
//! token`, sign) JWTs come from.
//!
//! Each key carries the one algorithm it is used with, pinned by its type
//! (an HS secret → HS256, an RSA key → RS256, P-256 → ES256, Ed25519 →
//! EdDSA); a token whose header names another algorithm is refused before
//! its signature is looked at. That is what makes `alg: none` and the
//! HS/RS confusion (an HS256 token "signed" with the RSA public key) fail.

use std::{
    fmt,
    path::Path,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthSettings, ConfigError};

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least
/// as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;

/// A JWKS document larger than this is refused (a key set is a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why key material is unusable. Names the key and file, never the content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// One verification key with the algorithm it is pinned to.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

// `DecodingKey`'s own Debug prints an HS secret's bytes.
impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Parses every configured key without starting anything: used when the
/// settings are loaded, so bad key material is a configuration error.
pub fn check(auth: &AuthSettings) -> Result<(), KeyError> {
    static_key(auth)?;
    if auth.jwt_private_key_file.is_some() {
        signing_key(auth)?;
    }
    Ok(())
}

/// The key from `jwt_secret(_file)` or `jwt_public_key_file`, if one is set.
pub fn static_key(auth: &AuthSettings) -> Result<Option<VerifyKey>, KeyError> {
    if let Some(secret) = auth.hs_secret()? {
        let bytes = secret.expose().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                secret_key_name(auth),
                format!("an HS256 secret must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        return Ok(Some(VerifyKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(bytes),
        }));
    }
    let Some(path) = &auth.jwt_public_key_file else {
        return Ok(None);
    };
    let pem = read_file("auth.jwt_public_key_file", path)?;
    let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (Algorithm::EdDSA, key)
    } else {
        return Err(invalid(
            "auth.jwt_public_key_file",
            format!(
                "{}: expected a PEM public key (RSA, EC P-256 or Ed25519)",
                path.display()
            ),
        ));
    };
    Ok(Some(VerifyKey {
        kid: None,
        alg,
        key,
    }))
}

fn secret_key_name(auth: &AuthSettings) -> &'static str {
    if auth.jwt_secret.is_some() {
        "auth.jwt_secret"
    } else {
        "auth.jwt_secret_file"
    }
}

/// The key `user-service token` signs with: the HS secret, or else the
/// private key file (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
pub fn signing_key(auth: &AuthSettings) -> Result<(Algorithm, EncodingKey), KeyError> {
    if let Some(secret) = auth.hs_secret()? {
        if secret.expose().len() < MIN_SECRET_BYTES {
            return Err(invalid(
                secret_key_name(auth),
                format!("an HS256 secret must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        return Ok((
            Algorithm::HS256,
            EncodingKey::from_secret(secret.expose().as_bytes()),
        ));
    }
    let Some(path) = &auth.jwt_private_key_file else {
        return Err(invalid(
            "auth.jwt_private_key_file",
            "minting a token needs auth.jwt_secret, auth.jwt_secret_file or auth.jwt_private_key_file",
        ));
    };
    let pem = read_file("auth.jwt_private_key_file", path)?;
    if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        Ok((Algorithm::RS256, key))
    } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        Ok((Algorithm::ES256, key))
    } else if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
        Ok((Algorithm::EdDSA, key))
    } else {
        Err(invalid(
            "auth.jwt_private_key_file",
            format!(
                "{}: expected a PEM private key (RSA, EC P-256 or Ed25519)",
                path.display()
            ),
        ))
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// The algorithm a JWK is used with, or `None` for keys we never accept:
/// symmetric (`oct`) keys, encryption keys, and algorithms that do not
/// fit the key's type.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let (family, inferred) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Algorithm::ES256),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Algorithm::ES384),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            (AlgorithmFamily::Ed, Algorithm::EdDSA)
        }
        // A shared secret published in a key set is not a secret.
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::OctetKeyPair(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(declared) => Algorithm::from_str(&declared.to_string()).ok()?,
        None => inferred,
    };
    (alg.family() == family).then_some(alg)
}

/// An identity provider's key set: fetched at startup, then every
/// `jwks_refresh_interval`, and on demand when a token names an unknown
/// `kid` (at most once per `jwks_min_refresh_interval`). A failed fetch
/// keeps the keys we have, so a provider outage does not lock users out.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<Vec<Arc<VerifyKey>>>>,
    /// Counts the sets fetched: tokens verified with an earlier set are
    /// checked again (`auth::cache`).
    generation: AtomicU64,
    /// When the last fetch started; also makes fetches one at a time.
    last_fetch: Mutex<Option<Instant>>,
    min_interval: Duration,
    refresh_interval: Duration,
}

impl Jwks {
    pub fn new(auth: &AuthSettings, url: &str) -> Result<Self, KeyError> {
        // reqwest is built without a bundled crypto provider; use ring,
        // which rustls already has in this tree. An error means another
        // provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if url.starts_with("http://") {
            tracing::warn!(%url, "the JWKS is fetched over plain HTTP: anyone on the path could swap the keys");
        }
        let client = reqwest::Client::builder()
            .timeout(auth.jwks_timeout)
            .connect_timeout(auth.jwks_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("user-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                invalid(
                    "auth.jwks_url",
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            last_fetch: Mutex::new(None),
            min_interval: auth.jwks_min_refresh_interval,
            refresh_interval: auth.jwks_refresh_interval,
        })
    }

    fn current(&self) -> Arc<Vec<Arc<VerifyKey>>> {
        // A poisoned lock still holds a complete key list (it is replaced
        // whole), so keep using it.
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Which key set is current; it changes with every fetch.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key for a token's `kid`; a token without one matches only a
    /// set holding a single key.
    pub fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        let keys = self.current();
        match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
            None if keys.len() == 1 => keys.first().cloned(),
            None => None,
        }
    }

    /// Fetches the set unless one was fetched less than
    /// `jwks_min_refresh_interval` ago (`force` skips that check, for the
    /// periodic refresh). Concurrent callers wait for the one fetch.
    pub async fn refresh(&self, force: bool) {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < self.min_interval) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let keys = Arc::new(keys);
                match self.keys.write() {
                    Ok(mut slot) => *slot = keys,
                    Err(poisoned) => *poisoned.into_inner() = keys,
                }
                self.generation.fetch_add(1, Ordering::Release);
            }
            Err(reason) => {
                let kept = self.current().len();
                tracing::warn!(url = %self.url, error = %reason, kept, "JWKS fetch failed; keeping the keys we have");
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Arc<VerifyKey>>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("key set larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    /// Refreshes every `jwks_refresh_interval` until `stop` is cancelled.
    pub async fn run_refresh(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.refresh_interval) => self.refresh(true).await,
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The usable keys of a JWKS document; keys we cannot or will not use are
/// skipped rather than failing the whole set.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<VerifyKey>>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys = set
        .keys
        .into_iter()
        .filter_map(|value| {
            let jwk: Jwk = serde_json::from_value(value).ok()?;
            let alg = jwk_algorithm(&jwk)?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(Arc::new(VerifyKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            }))
        })
        .collect();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_keeps_only_signature_keys_of_a_known_shape() {
        let body = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"sym"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"enc","use":"enc"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"mismatch","alg":"HS256"},
            {"kty":"unknown"}
        ]}"#;
        let keys = parse_jwks(body).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ed")]);
        assert_eq!(keys[0].alg, Algorithm::EdDSA);
        assert!(parse_jwks(b"not json").is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let auth = AuthSettings {
            jwt_secret: Some(crate::config::Secret::new("short")),
            ..AuthSettings::default()
        };
        let err = static_key(&auth).unwrap_err().to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains("short"), "{err}");
    }
}
