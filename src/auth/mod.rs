//! Authentication: one tower layer that checks the bearer JWT of every
//! call before any handler runs, and hands the caller to the handlers.
//!
//! It works at the HTTP level, inside the observing layer
//! (`grpc/middleware/observe.rs`), so a refused call is still counted and logged with
//! its code. Per method (from the path, see [`policy`]): public methods
//! pass untouched; the others need a valid token, and admin-only methods
//! the `admin` role. The caller goes into the request extensions as a
//! [`crate::domain::Actor`]; the domain decides what that caller may do to
//! which user. With auth disabled every call gets `Actor::Unrestricted`.
//!
//! Refusals are trailers-only responses with UNAUTHENTICATED or
//! PERMISSION_DENIED and a short reason; the token is never echoed or
//! logged.

mod cache;
pub mod claims;
pub mod keys;
pub mod policy;

use std::{
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, Request, Response};
use jsonwebtoken::{errors::ErrorKind, Header, Validation};
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, Status};
use tower::{Layer, Service};

pub use self::claims::Claims;
use self::{
    cache::TokenCache,
    keys::{Jwks, KeyError, VerifyKey},
    policy::Access,
};
use crate::{config::AuthSettings, domain::Actor};

/// Tokens longer than this are refused unread (real ones are < 2 KiB).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth: {0}")]
    Keys(#[from] KeyError),
    #[error("auth: cannot sign the token: {0}")]
    Sign(String),
}

/// Why a token was refused. The client sees [`Rejection::message`] only;
/// the kind is logged at debug for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    NotBearer,
    Expired,
    /// Anything else: bad signature, wrong algorithm, issuer or audience,
    /// unknown key, malformed. One message, so a prober learns nothing.
    Invalid(&'static str),
}

impl Rejection {
    pub fn message(self) -> &'static str {
        match self {
            Rejection::Missing => "missing bearer token",
            Rejection::NotBearer => "authorization must be \"Bearer <token>\"",
            Rejection::Expired => "token expired",
            Rejection::Invalid(_) => "invalid token",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Rejection::Invalid(detail) => detail,
            other => other.message(),
        }
    }
}

enum Keys {
    Static(Arc<VerifyKey>),
    Jwks(Arc<Jwks>),
}

/// Checks tokens against the configured key and claims.
pub struct Verifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    /// Tokens that passed, so a repeated one is not checked again.
    verified: TokenCache,
}

impl Verifier {
    /// Builds the verifier; with a JWKS URL this fetches the key set once
    /// (bounded by `auth.jwks_timeout`; a failure is logged and retried).
    pub async fn new(auth: &AuthSettings) -> Result<Self, AuthError> {
        let keys = match (&auth.jwks_url, keys::static_key(auth)?) {
            (_, Some(key)) => Keys::Static(Arc::new(key)),
            (Some(url), None) => {
                let jwks = Arc::new(Jwks::new(auth, url)?);
                jwks.refresh(true).await;
                Keys::Jwks(jwks)
            }
            (None, None) => {
                return Err(KeyError::Invalid {
                    key: "auth.enabled",
                    reason: "no key source configured".into(),
                }
                .into())
            }
        };
        Ok(Self {
            keys,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway.as_secs(),
            verified: TokenCache::default(),
        })
    }

    /// The caller of a token that passed before, with the same keys, and
    /// has not expired since: no decoding, no signature check.
    pub fn cached(&self, token: &str) -> Option<Actor> {
        self.cached_for(token, self.key_set())
    }

    fn cached_for(&self, token: &str, keys: u64) -> Option<Actor> {
        // One that long was never kept; not even worth hashing.
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        self.verified.get(token, keys)
    }

    /// The caller of `token`: from [`Verifier::cached`], or verified (and
    /// then kept).
    pub async fn authenticate(&self, token: &str) -> Result<Actor, Rejection> {
        // Read before verifying: should the set change meanwhile, the
        // entry belongs to the older one and is checked again next time.
        let keys = self.key_set();
        if let Some(actor) = self.cached_for(token, keys) {
            return Ok(actor);
        }
        let claims = self.verify(token).await?;
        let actor = Actor::user(claims.sub, &claims.roles);
        let valid_until = claims.exp.saturating_add(self.leeway);
        self.verified
            .insert(token, actor.clone(), valid_until, keys);
        Ok(actor)
    }

    fn key_set(&self) -> u64 {
        match &self.keys {
            Keys::Static(_) => 0,
            Keys::Jwks(jwks) => jwks.generation(),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::Invalid("token too long"));
        }
        // An unknown `alg` (such as "none") fails here already.
        let header: Header =
            jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid("malformed"))?;
        let key = match &self.keys {
            Keys::Static(key) => Arc::clone(key),
            Keys::Jwks(jwks) => match jwks.find(header.kid.as_deref()) {
                Some(key) => key,
                None => {
                    // Perhaps the provider rotated its keys.
                    jwks.refresh(false).await;
                    jwks.find(header.kid.as_deref())
                        .ok_or(Rejection::Invalid("unknown key"))?
                }
            },
        };
        // The key decides the algorithm, never the token.
        if header.alg != key.alg {
            return Err(Rejection::Invalid("algorithm not accepted"));
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway;
        // jsonwebtoken skips `nbf` unless asked; a token not valid yet is
        // as unusable as an expired one.
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience, any `aud` is accepted.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| classify(e.kind()))?;
        let claims = data.claims;
        // `iss` must be exactly ours (the library also accepts an array).
        if self.issuer.is_some() && claims.iss != self.issuer {
            return Err(Rejection::Invalid("issuer"));
        }
        if claims.sub.is_empty() {
            return Err(Rejection::Invalid("empty subject"));
        }
        Ok(claims)
    }
}

fn classify(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::InvalidSignature => Rejection::Invalid("signature"),
        ErrorKind::InvalidIssuer => Rejection::Invalid("issuer"),
        ErrorKind::InvalidAudience => Rejection::Invalid("audience"),
        ErrorKind::ImmatureSignature => Rejection::Invalid("not yet valid"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            Rejection::Invalid("algorithm not accepted")
        }
        ErrorKind::MissingRequiredClaim(_) => Rejection::Invalid("missing claim"),
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => Rejection::Invalid("claims"),
        _ => Rejection::Invalid("malformed"),
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(Rejection::Missing)?;
    let value = value.to_str().map_err(|_| Rejection::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(Rejection::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Rejection::Missing);
    }
    Ok(token)
}

/// Authentication as configured: a verifier, or none when disabled.
#[derive(Clone)]
pub struct Auth {
    verifier: Option<Arc<Verifier>>,
}

impl Auth {
    pub async fn from_settings(auth: &AuthSettings) -> Result<Self, AuthError> {
        if !auth.enabled {
            tracing::warn!(
                "authentication is disabled (auth.enabled=false): every RPC is open to any caller"
            );
            return Ok(Self::disabled());
        }
        Ok(Self {
            verifier: Some(Arc::new(Verifier::new(auth).await?)),
        })
    }

    /// Every caller is unrestricted.
    pub fn disabled() -> Self {
        Self { verifier: None }
    }

    pub fn layer(&self) -> AuthLayer {
        AuthLayer {
            verifier: self.verifier.clone(),
        }
    }

    /// The periodic JWKS refresh, when keys come from a JWKS URL, for the
    /// caller to run; it ends when `stop` is cancelled.
    pub fn refresh_task(
        &self,
        stop: CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        match self.verifier.as_deref().map(|v| &v.keys) {
            Some(Keys::Jwks(jwks)) => Some(Arc::clone(jwks).run_refresh(stop)),
            _ => None,
        }
    }
}

/// Signs a token for `sub` with `roles`, valid for `ttl`, carrying the
/// configured issuer and audience (`user-service token`).
pub fn mint(
    auth: &AuthSettings,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, AuthError> {
    let (alg, key) = keys::signing_key(auth)?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: sub.to_owned(),
        roles: roles.to_vec(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: Some(now),
        iss: auth.issuer.clone(),
        aud: auth.audience.clone().map(serde_json::Value::String),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key)
        .map_err(|e| AuthError::Sign(e.to_string()))
}

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Option<Arc<Verifier>>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Option<Arc<Verifier>>,
}

impl<S> Service<Request<Body>> for Authenticate<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    /// Calls that need no token (auth off, public methods) go straight
    /// through, without a box; only token checks, which may wait for a
    /// JWKS fetch, get a future of their own.
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(verifier) = self.verifier.clone() else {
            req.extensions_mut().insert(Actor::Unrestricted);
            return Either::Left(self.inner.call(req));
        };
        let access = policy::access(req.uri().path());
        if access == Access::Public {
            return Either::Left(self.inner.call(req));
        }
        // The usual call: a token that passed before. No box, no await.
        if let Some(actor) = bearer(req.headers())
            .ok()
            .and_then(|token| verifier.cached(token))
        {
            if access != Access::Admin || actor.is_admin() {
                req.extensions_mut().insert(actor);
                return Either::Left(self.inner.call(req));
            }
        }
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let verified = match bearer(req.headers()) {
                Ok(token) => verifier.authenticate(token).await,
                Err(rejection) => Err(rejection),
            };
            let actor = match verified {
                Ok(actor) => actor,
                Err(rejection) => {
                    tracing::debug!(
                        path = req.uri().path(),
                        reason = rejection.detail(),
                        "token refused"
                    );
                    return Ok(Status::unauthenticated(rejection.message()).into_http());
                }
            };
            if access == Access::Admin && !actor.is_admin() {
                return Ok(
                    Status::permission_denied("this method needs the admin role").into_http(),
                );
            }
            req.extensions_mut().insert(actor);
            inner.call(req).await
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Err(Rejection::Missing));
        headers.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(bearer(&headers), Err(Rejection::NotBearer));
        headers.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(bearer(&headers), Err(Rejection::NotBearer));
        headers.insert("authorization", "Bearer  ".parse().unwrap());
        assert_eq!(bearer(&headers), Err(Rejection::Missing));
        headers.insert("authorization", "bearer a.b.c".parse().unwrap());
        assert_eq!(bearer(&headers), Ok("a.b.c"));
        // Opaque (non-ASCII) bytes are no bearer token.
        let opaque = http::HeaderValue::from_bytes(b"Bearer a.b.\xff").unwrap();
        headers.insert("authorization", opaque);
        assert_eq!(bearer(&headers), Err(Rejection::NotBearer));
    }

    #[test]
    fn rejection_messages_never_say_more_than_the_kind() {
        for r in [
            Rejection::Invalid("signature"),
            Rejection::Invalid("issuer"),
            Rejection::Invalid("unknown key"),
        ] {
            assert_eq!(r.message(), "invalid token");
        }
    }

    /// Auth on with an HS256 secret, nothing else set.
    fn hs256() -> AuthSettings {
        AuthSettings {
            enabled: true,
            jwt_secret: Some(crate::config::Secret::new(
                "0123456789abcdef0123456789abcdef",
            )),
            ..AuthSettings::default()
        }
    }

    #[tokio::test]
    async fn only_tokens_that_pass_are_kept() {
        let auth = hs256();
        let verifier = Verifier::new(&auth).await.unwrap();
        let token = mint(&auth, "someone", &["admin".into()], Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.cached(&token), None);
        let actor = verifier.authenticate(&token).await.unwrap();
        assert_eq!(actor, Actor::user("someone", &["admin".into()]));
        assert_eq!(verifier.cached(&token), Some(actor));
        // The same claims under a broken signature: refused, and not kept.
        let at = token.len() - 5;
        let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
        assert_eq!(
            verifier.authenticate(&forged).await.unwrap_err(),
            Rejection::Invalid("signature")
        );
        assert_eq!(verifier.cached(&forged), None);
    }

    #[tokio::test]
    async fn minted_tokens_verify_and_carry_the_claims() {
        let auth = AuthSettings {
            issuer: Some("https://issuer.example".into()),
            audience: Some("user-service".into()),
            ..hs256()
        };
        let verifier = Verifier::new(&auth).await.unwrap();
        let token = mint(&auth, "someone", &["admin".into()], Duration::from_secs(60)).unwrap();
        let claims = verifier.verify(&token).await.unwrap();
        assert_eq!(claims.sub, "someone");
        assert_eq!(claims.roles, ["admin"]);
        assert_eq!(claims.iss.as_deref(), Some("https://issuer.example"));
        // A token of another audience is refused.
        let other = AuthSettings {
            audience: Some("another-service".into()),
            ..auth.clone()
        };
        let token = mint(&other, "someone", &[], Duration::from_secs(60)).unwrap();
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            Rejection::Invalid("audience")
        );
    }
}
