//! Authentication and authorization end to end: every method with every
//! kind of bad token, ownership and admin rules, the RS256 and JWKS key
//! sources (with a key rotation), metrics of refused calls, and no secret
//! in the logs of a real process.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::{transport::Channel, Code, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use user_service::{
    config::{Secret, Settings},
    pb::{
        user_service_client::UserServiceClient, CreateUserRequest, DeleteUserRequest,
        GetUserRequest, ListUsersRequest, UpdateUserRequest, UserStatus, WatchUsersRequest,
    },
};

use crate::helpers::{
    connect, create_request, http_get, spawn_app_with, start_child, test_settings, unused_addr,
};

const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "user-service";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn auth_settings() -> Settings {
    let mut s = test_settings();
    s.auth.enabled = true;
    s.auth.issuer = Some(ISSUER.into());
    s.auth.audience = Some(AUDIENCE.into());
    s
}

fn hs_settings() -> Settings {
    let mut s = auth_settings();
    s.auth.jwt_secret = Some(Secret::new(SECRET));
    s
}

fn claims(sub: &str, roles: &[&str]) -> serde_json::Value {
    json!({
        "sub": sub,
        "roles": roles,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

fn sign(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture(name)).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`) with otherwise perfect claims.
fn alg_none(claims: &serde_json::Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Creates a user through the public sign-up and returns its id.
async fn sign_up(channel: &Channel, tag: &str) -> String {
    UserServiceClient::new(channel.clone())
        .create_user(create_request(tag))
        .await
        .unwrap()
        .into_inner()
        .id
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    CreateUser,
    GetUser,
    UpdateUserName,
    UpdateUserStatus,
    DeleteUser,
    ListUsers,
    BulkCreateUsers,
    UserUpdates,
    WatchUsers,
    HealthCheck,
    Reflection,
}

/// Who may call a method, as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, with a token or without.
    Public,
    /// A user on their own record; an admin on anyone's.
    Own,
    /// Admins only. (Setting a status is UpdateUser, like renaming: the
    /// auth layer lets a user through on their own record and the domain
    /// refuses the status change.)
    Admin,
}

/// Every method the tests call (see [`call`] for how each is called): the
/// RPC it is, as metrics name it, and who may call it. DeleteUser last, so
/// a run that succeeds leaves the target for the rest.
const METHODS: [(Method, &str, Access); 11] = [
    (Method::CreateUser, "CreateUser", Access::Public),
    (Method::HealthCheck, "Check", Access::Public),
    (Method::Reflection, "ServerReflectionInfo", Access::Public),
    (Method::GetUser, "GetUser", Access::Own),
    (Method::UpdateUserName, "UpdateUser", Access::Own),
    (Method::UpdateUserStatus, "UpdateUser", Access::Admin),
    (Method::UserUpdates, "UserUpdates", Access::Own),
    (Method::ListUsers, "ListUsers", Access::Admin),
    (Method::BulkCreateUsers, "BulkCreateUsers", Access::Admin),
    (Method::WatchUsers, "WatchUsers", Access::Admin),
    (Method::DeleteUser, "DeleteUser", Access::Admin),
];

/// The methods of [`METHODS`] that `access` describes, in its order.
fn methods(access: impl Fn(Access) -> bool) -> Vec<Method> {
    METHODS
        .iter()
        .filter(|(_, _, a)| access(*a))
        .map(|(method, _, _)| *method)
        .collect()
}

/// Every method that needs a token.
fn protected() -> Vec<Method> {
    methods(|a| a != Access::Public)
}

fn public() -> Vec<Method> {
    methods(|a| a == Access::Public)
}

/// The RPC name of `method` (UpdateUserName and UpdateUserStatus are both
/// UpdateUser).
fn rpc(method: Method) -> &'static str {
    METHODS
        .iter()
        .find(|(m, _, _)| *m == method)
        .map(|(_, rpc, _)| *rpc)
        .unwrap()
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Calls `method` (on user `target` where it takes one) and returns the
/// call's code; for streams, the code of the first answer.
async fn call(channel: &Channel, method: Method, token: Option<&str>, target: &str) -> Code {
    let mut users = UserServiceClient::new(channel.clone());
    let target = target.to_owned();
    match method {
        Method::CreateUser => code(
            users
                .create_user(with_token(create_request("pub"), token))
                .await,
        ),
        Method::GetUser => code(
            users
                .get_user(with_token(GetUserRequest { user_id: target }, token))
                .await,
        ),
        Method::UpdateUserName => code(
            users
                .update_user(with_token(
                    UpdateUserRequest {
                        user_id: target,
                        name: "Renamed".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        Method::UpdateUserStatus => code(
            users
                .update_user(with_token(
                    UpdateUserRequest {
                        user_id: target,
                        status: UserStatus::Active as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        Method::DeleteUser => code(
            users
                .delete_user(with_token(DeleteUserRequest { user_id: target }, token))
                .await,
        ),
        Method::ListUsers => match users
            .list_users(with_token(ListUsersRequest::default(), token))
            .await
        {
            Ok(response) => code(response.into_inner().message().await),
            Err(status) => status.code(),
        },
        Method::BulkCreateUsers => {
            let items = tokio_stream::iter(vec![create_request("bulk")]);
            code(users.bulk_create_users(with_token(items, token)).await)
        }
        Method::UserUpdates => {
            let items = tokio_stream::iter(vec![UpdateUserRequest {
                user_id: target,
                name: "Streamed".into(),
                ..Default::default()
            }]);
            match users.user_updates(with_token(items, token)).await {
                Ok(response) => match response.into_inner().message().await {
                    Ok(Some(_)) => Code::Ok,
                    Ok(None) => Code::Unknown,
                    Err(status) => status.code(),
                },
                Err(status) => status.code(),
            }
        }
        Method::WatchUsers => code(
            users
                .watch_users(with_token(WatchUsersRequest::default(), token))
                .await,
        ),
        Method::HealthCheck => code(
            HealthClient::new(channel.clone())
                .check(with_token(
                    HealthCheckRequest {
                        service: String::new(),
                    },
                    token,
                ))
                .await,
        ),
        Method::Reflection => {
            use tonic_reflection::pb::v1::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest, ServerReflectionRequest,
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut client = ServerReflectionClient::new(channel.clone());
            match client
                .server_reflection_info(with_token(tokio_stream::iter(vec![request]), token))
                .await
            {
                Ok(response) => code(response.into_inner().message().await),
                Err(status) => status.code(),
            }
        }
    }
}

/// Every kind of token that must not get past the layer, by name.
fn bad_tokens(self_id: &str) -> Vec<(&'static str, Option<String>)> {
    let mut expired = claims(self_id, &["admin"]);
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 7200);
    let mut wrong_issuer = claims(self_id, &["admin"]);
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut issuer_array = claims(self_id, &["admin"]);
    issuer_array["iss"] = json!([ISSUER, "https://evil.test"]);
    let mut wrong_audience = claims(self_id, &["admin"]);
    wrong_audience["aud"] = json!("another-service");
    let mut no_issuer = claims(self_id, &["admin"]);
    no_issuer.as_object_mut().unwrap().remove("iss");
    let mut no_audience = claims(self_id, &["admin"]);
    no_audience.as_object_mut().unwrap().remove("aud");
    let mut not_yet_valid = claims(self_id, &["admin"]);
    not_yet_valid["nbf"] = json!(now() + 3600);
    let mut no_sub = claims(self_id, &["admin"]);
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut roles_not_a_list = claims(self_id, &[]);
    roles_not_a_list["roles"] = json!("admin");
    let mut no_exp = claims(self_id, &["admin"]);
    no_exp.as_object_mut().unwrap().remove("exp");
    vec![
        ("no token", None),
        ("garbage", Some("garbage".into())),
        ("three garbage parts", Some("a.b.c".into())),
        (
            "wrong key",
            Some(sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-0123456789abcdefghij"),
                None,
                &claims(self_id, &["admin"]),
            )),
        ),
        (
            "RS256 token for an HS256 service",
            Some(sign(
                Algorithm::RS256,
                &rsa_key("rsa-a.key.pem"),
                None,
                &claims(self_id, &["admin"]),
            )),
        ),
        ("alg none", Some(alg_none(&claims(self_id, &["admin"])))),
        ("expired", Some(hs(&expired))),
        ("wrong issuer", Some(hs(&wrong_issuer))),
        ("issuer array", Some(hs(&issuer_array))),
        ("wrong audience", Some(hs(&wrong_audience))),
        ("no issuer", Some(hs(&no_issuer))),
        ("no audience", Some(hs(&no_audience))),
        ("no exp", Some(hs(&no_exp))),
        ("nbf in the future", Some(hs(&not_yet_valid))),
        ("no sub", Some(hs(&no_sub))),
        ("roles not a list", Some(hs(&roles_not_a_list))),
    ]
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_on_every_protected_method_and_public_ones_stay_open() {
    let app = spawn_app_with(hs_settings()).await;
    let me = sign_up(&app.channel, "me").await;
    for (kind, token) in bad_tokens(&me) {
        for method in protected() {
            assert_eq!(
                call(&app.channel, method, token.as_deref(), &me).await,
                Code::Unauthenticated,
                "{method:?} with {kind}"
            );
        }
        for method in public() {
            assert_eq!(
                call(&app.channel, method, token.as_deref(), &me).await,
                Code::Ok,
                "{method:?} with {kind}"
            );
        }
    }
    // Nothing was changed by any refused call.
    let admin = hs(&claims("ops", &["admin"]));
    let user = UserServiceClient::new(app.channel.clone())
        .get_user(with_token(GetUserRequest { user_id: me }, Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert!(user.name.starts_with("User "), "{}", user.name);
    app.stop().await;
}

#[tokio::test]
async fn refusals_say_little_and_never_echo_the_token() {
    let app = spawn_app_with(hs_settings()).await;
    let mut users = UserServiceClient::new(app.channel.clone());
    let mut expired = claims("someone", &[]);
    expired["exp"] = json!(now() - 3600);
    let cases = [
        (None, "missing bearer token".to_owned()),
        (
            Some("not-a-jwt-secret-looking-value".to_owned()),
            "invalid token".to_owned(),
        ),
        (Some(hs(&expired)), "token expired".to_owned()),
    ];
    for (token, message) in cases {
        let status = users
            .get_user(with_token(
                GetUserRequest {
                    user_id: uuid::Uuid::now_v7().to_string(),
                },
                token.as_deref(),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), message);
        if let Some(token) = &token {
            assert!(!format!("{status:?}").contains(token.as_str()));
        }
    }
    // Not a Bearer scheme at all.
    let mut request = Request::new(GetUserRequest::default());
    request.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwYXNzd29yZA==".parse().unwrap(),
    );
    let status = users.get_user(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains("dXNlcjpwYXNzd29yZA"));
    app.stop().await;
}

/// A token that passed is not checked again on every call (the service
/// keeps it), yet it never outlives its `exp` plus the leeway, and being
/// kept never lets it do more than it could the first time.
#[tokio::test]
async fn a_token_that_passed_stops_working_when_it_expires() {
    let mut settings = hs_settings();
    settings.auth.leeway = Duration::ZERO;
    let app = spawn_app_with(settings).await;
    let me = sign_up(&app.channel, "expiring").await;
    let mut short = claims(&me, &[]);
    let exp = now() + 2;
    short["exp"] = json!(exp);
    let token = hs(&short);
    for _ in 0..3 {
        assert_eq!(
            call(&app.channel, Method::GetUser, Some(&token), &me).await,
            Code::Ok
        );
        assert_eq!(
            call(&app.channel, Method::ListUsers, Some(&token), &me).await,
            Code::PermissionDenied
        );
    }
    // `exp` is in whole seconds: past it means the second after.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut users = UserServiceClient::new(app.channel.clone());
    let status = users
        .get_user(with_token(
            GetUserRequest {
                user_id: me.clone(),
            },
            Some(&token),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "token expired");
    app.stop().await;
}

#[tokio::test]
async fn users_act_on_themselves_and_admins_on_everyone() {
    let app = spawn_app_with(hs_settings()).await;
    let me = sign_up(&app.channel, "me").await;
    let other = sign_up(&app.channel, "other").await;
    let user = hs(&claims(&me, &["user"]));
    let admin = hs(&claims("ops@example.com", &["user", "admin"]));
    let ch = &app.channel;

    // A user on their own record: public methods (a token is accepted
    // too), read, rename, streamed rename; not status, nor admin-only
    // methods.
    for (method, _, access) in METHODS {
        let expected = match access {
            Access::Public | Access::Own => Code::Ok,
            Access::Admin => Code::PermissionDenied,
        };
        assert_eq!(
            call(ch, method, Some(&user), &me).await,
            expected,
            "{method:?} by a user on their own record"
        );
    }
    // ... on another user's record: nothing, not even whether it exists.
    for method in protected() {
        assert_eq!(
            call(ch, method, Some(&user), &other).await,
            Code::PermissionDenied,
            "{method:?} by a user on another's record"
        );
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        call(ch, Method::GetUser, Some(&user), &unknown).await,
        Code::PermissionDenied
    );

    // An admin may do everything to anyone.
    for method in protected() {
        assert_eq!(
            call(ch, method, Some(&admin), &other).await,
            Code::Ok,
            "{method:?} by an admin"
        );
    }
    // The rename stuck, and the deletion (last) too.
    assert_eq!(
        call(ch, Method::GetUser, Some(&admin), &other).await,
        Code::NotFound
    );
    let renamed = UserServiceClient::new(ch.clone())
        .get_user(with_token(
            GetUserRequest {
                user_id: me.clone(),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "Streamed");
    app.stop().await;
}

#[tokio::test]
async fn rs256_public_key_rejects_hs_rs_confusion_and_foreign_keys() {
    let mut settings = auth_settings();
    settings.auth.jwt_public_key_file = Some(fixture("rsa-a.pub.pem"));
    let app = spawn_app_with(settings).await;
    let me = sign_up(&app.channel, "rs").await;
    let good = sign(
        Algorithm::RS256,
        &rsa_key("rsa-a.key.pem"),
        None,
        &claims(&me, &[]),
    );
    assert_eq!(
        call(&app.channel, Method::GetUser, Some(&good), &me).await,
        Code::Ok
    );

    // HS256 "signed" with the public key, which an attacker has.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&read_fixture("rsa-a.pub.pem")),
        None,
        &claims(&me, &["admin"]),
    );
    let foreign = sign(
        Algorithm::RS256,
        &rsa_key("rsa-b.key.pem"),
        None,
        &claims(&me, &["admin"]),
    );
    let other_rsa_alg = sign(
        Algorithm::RS512,
        &rsa_key("rsa-a.key.pem"),
        None,
        &claims(&me, &["admin"]),
    );
    let none = alg_none(&claims(&me, &["admin"]));
    for (kind, token) in [
        ("HS/RS confusion", confused),
        ("foreign key", foreign),
        ("RS512 where RS256 is pinned", other_rsa_alg),
        ("alg none", none),
    ] {
        for method in protected() {
            assert_eq!(
                call(&app.channel, method, Some(&token), &me).await,
                Code::Unauthenticated,
                "{method:?} with {kind}"
            );
        }
    }
    app.stop().await;
}

/// A JWKS endpoint on 127.0.0.1 whose document and health the test sets.
struct JwksServer {
    url: String,
    document: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new((200, document)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (Arc::clone(&document), Arc::clone(&fetches));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (doc, count) = (Arc::clone(&doc), Arc::clone(&count));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = doc.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            document,
            fetches,
        }
    }

    fn set(&self, status: u16, body: String) {
        *self.document.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Jwk> = keys
        .iter()
        .map(|(kid, file)| {
            let mut jwk = Jwk::from_encoding_key(&rsa_key(file), Algorithm::RS256).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn jwks_keys_rotate_are_cached_through_an_outage_and_refetches_are_rate_limited() {
    let provider = JwksServer::start(jwks(&[("k1", "rsa-a.key.pem")])).await;
    let mut settings = auth_settings();
    settings.auth.jwks_url = Some(provider.url.clone());
    settings.auth.jwks_min_refresh_interval = Duration::from_millis(500);
    // Long enough that only the test's own triggers cause fetches at first.
    settings.auth.jwks_refresh_interval = Duration::from_secs(3600);
    let app = spawn_app_with(settings.clone()).await;
    assert_eq!(provider.fetches(), 1, "fetched once at startup");
    let me = sign_up(&app.channel, "jwks").await;
    let ch = &app.channel;
    let k1 = sign(
        Algorithm::RS256,
        &rsa_key("rsa-a.key.pem"),
        Some("k1"),
        &claims(&me, &[]),
    );
    let k2 = sign(
        Algorithm::RS256,
        &rsa_key("rsa-b.key.pem"),
        Some("k2"),
        &claims(&me, &[]),
    );
    // The right kid with another key's signature.
    let forged = sign(
        Algorithm::RS256,
        &rsa_key("rsa-b.key.pem"),
        Some("k1"),
        &claims(&me, &[]),
    );
    assert_eq!(call(ch, Method::GetUser, Some(&k1), &me).await, Code::Ok);
    assert_eq!(
        call(ch, Method::GetUser, Some(&forged), &me).await,
        Code::Unauthenticated
    );
    assert_eq!(provider.fetches(), 1, "known kid: no fetch");

    // The provider rotates to a new key with a new kid: the first token
    // that names it makes the service fetch again.
    provider.set(200, jwks(&[("k2", "rsa-b.key.pem")]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(ch, Method::GetUser, Some(&k2), &me).await, Code::Ok);
    assert_eq!(provider.fetches(), 2);
    // The old key is gone with the set.
    assert_eq!(
        call(ch, Method::GetUser, Some(&k1), &me).await,
        Code::Unauthenticated
    );

    // A burst of unknown kids costs at most one fetch per interval.
    let before = provider.fetches();
    for i in 0..20 {
        let token = sign(
            Algorithm::RS256,
            &rsa_key("rsa-b.key.pem"),
            Some(&format!("nope{i}")),
            &claims(&me, &[]),
        );
        assert_eq!(
            call(ch, Method::GetUser, Some(&token), &me).await,
            Code::Unauthenticated
        );
    }
    assert!(
        provider.fetches() - before <= 2,
        "{} fetches for 20 unknown kids",
        provider.fetches() - before
    );
    app.stop().await;

    // A provider outage keeps the cached keys; periodic refreshes go on,
    // and the refresh task ends with the server (stop() waits for it).
    let provider = JwksServer::start(jwks(&[("k2", "rsa-b.key.pem")])).await;
    settings.auth.jwks_url = Some(provider.url.clone());
    settings.auth.jwks_refresh_interval = Duration::from_millis(100);
    let app = spawn_app_with(settings).await;
    let me = sign_up(&app.channel, "outage").await;
    let k2 = sign(
        Algorithm::RS256,
        &rsa_key("rsa-b.key.pem"),
        Some("k2"),
        &claims(&me, &[]),
    );
    assert_eq!(
        call(&app.channel, Method::GetUser, Some(&k2), &me).await,
        Code::Ok
    );
    provider.set(503, "down".into());
    let seen = provider.fetches();
    wait_for("refreshes during the outage", || {
        provider.fetches() >= seen + 3
    })
    .await;
    assert_eq!(
        call(&app.channel, Method::GetUser, Some(&k2), &me).await,
        Code::Ok
    );
    provider.set(200, "{\"keys\": not json".into());
    let seen = provider.fetches();
    wait_for("refreshes of a broken document", || {
        provider.fetches() >= seen + 2
    })
    .await;
    assert_eq!(
        call(&app.channel, Method::GetUser, Some(&k2), &me).await,
        Code::Ok
    );
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown with a JWKS refresh running");
    let after = provider.fetches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        provider.fetches(),
        after,
        "refreshes stopped with the server"
    );
}

/// `grpc_server_handled_total` for a method and code, from /metrics.
async fn handled(admin: SocketAddr, method: &str, code: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .filter(|l| {
            l.contains(&format!("grpc_method=\"{method}\""))
                && l.contains(&format!("grpc_code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn refused_calls_are_counted_with_their_code() {
    let app = spawn_app_with(hs_settings()).await;
    let me = sign_up(&app.channel, "metrics").await;
    let user = hs(&claims(&me, &[]));
    // Refused by the auth layer (no token; not an admin) and by the domain
    // (a user setting a status).
    let cases = [
        (Method::GetUser, None, Code::Unauthenticated),
        (
            Method::ListUsers,
            Some(user.as_str()),
            Code::PermissionDenied,
        ),
        (
            Method::UpdateUserStatus,
            Some(user.as_str()),
            Code::PermissionDenied,
        ),
    ];
    let admin = app.admin_addr;
    let mut before = Vec::new();
    for (method, _, refused) in cases {
        before.push(handled(admin, rpc(method), &format!("{refused:?}")).await);
    }
    for (method, token, refused) in cases {
        assert_eq!(
            call(&app.channel, method, token, &me).await,
            refused,
            "{method:?}"
        );
    }
    // The observing layer records a call as its response ends.
    for _ in 0..100 {
        let mut counted = true;
        for ((method, _, refused), before) in cases.iter().zip(&before) {
            counted &= handled(admin, rpc(*method), &format!("{refused:?}")).await > *before;
        }
        if counted {
            app.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("refused calls were not counted under their codes");
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    let mut settings = test_settings();
    settings.grpc.reflection = false;
    let app = spawn_app_with(settings).await;
    assert_eq!(
        call(&app.channel, Method::Reflection, None, "").await,
        Code::Unimplemented
    );
    assert_eq!(
        call(&app.channel, Method::HealthCheck, None, "").await,
        Code::Ok
    );
    app.stop().await;
}

#[tokio::test]
async fn auth_disabled_leaves_every_call_unrestricted() {
    let app = spawn_app_with(test_settings()).await;
    let me = sign_up(&app.channel, "open").await;
    for method in protected() {
        assert_eq!(
            call(&app.channel, method, None, &me).await,
            Code::Ok,
            "{method:?}"
        );
    }
    app.stop().await;
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_user-service"))
}

#[test]
fn the_token_command_mints_what_the_service_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let output = bin()
        .args([
            "token",
            "--sub",
            "0190b5a6-0000-7000-8000-000000000001",
            "--role",
            "admin",
            "--role",
            "ops",
            "--ttl",
            "5m",
        ])
        .env("USER_SERVICE__AUTH__ENABLED", "true")
        .env("USER_SERVICE__AUTH__JWT_SECRET_FILE", &secret_file)
        .env("USER_SERVICE__AUTH__ISSUER", ISSUER)
        .env("USER_SERVICE__AUTH__AUDIENCE", AUDIENCE)
        .env("USER_SERVICE__LOG__LEVEL", "debug")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    // The token alone, so TOKEN=$(user-service token ...) works.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let token = stdout.trim();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "0190b5a6-0000-7000-8000-000000000001");
    assert_eq!(data.claims["roles"], json!(["admin", "ops"]));
    let ttl = data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300);

    // With an EdDSA private key, for a service verifying the public key.
    let output = bin()
        .args(["token", "--sub", "svc"])
        .env(
            "USER_SERVICE__AUTH__JWT_PUBLIC_KEY_FILE",
            fixture("ed.pub.pem"),
        )
        .env(
            "USER_SERVICE__AUTH__JWT_PRIVATE_KEY_FILE",
            fixture("ed.key.pem"),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let header = jsonwebtoken::decode_header(token.trim()).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_ed_pem(&read_fixture("ed.pub.pem")).unwrap(),
        &jsonwebtoken::Validation::new(Algorithm::EdDSA),
    )
    .unwrap();
    assert_eq!(data.claims["roles"], json!([]));

    // Nothing to sign with: a clear error, not a token.
    let output = bin()
        .args(["token", "--sub", "x"])
        .env(
            "USER_SERVICE__AUTH__JWKS_URL",
            "https://idp.example/jwks.json",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("auth.jwt_private_key_file"));
}

#[test]
fn auth_config_errors_stop_startup_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort-but-secret").unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("USER_SERVICE__AUTH__ENABLED", "true".into())],
            "no key source",
        ),
        (
            vec![
                ("USER_SERVICE__AUTH__JWT_SECRET", SECRET.into()),
                (
                    "USER_SERVICE__AUTH__JWKS_URL",
                    "https://idp.example/jwks".into(),
                ),
            ],
            "exactly one key source",
        ),
        (
            vec![(
                "USER_SERVICE__AUTH__JWT_SECRET_FILE",
                short.display().to_string(),
            )],
            "at least 32 bytes",
        ),
        (
            vec![(
                "USER_SERVICE__AUTH__JWT_SECRET_FILE",
                dir.path().join("missing").display().to_string(),
            )],
            "auth.jwt_secret_file: cannot read",
        ),
        (
            vec![(
                "USER_SERVICE__AUTH__JWT_PUBLIC_KEY_FILE",
                not_pem.display().to_string(),
            )],
            "expected a PEM public key",
        ),
        (
            vec![(
                "USER_SERVICE__AUTH__JWKS_URL",
                "ftp://idp.example/jwks".into(),
            )],
            "auth.jwks_url",
        ),
        (
            vec![("USER_SERVICE__AUTH__COLOUR", "blue".into())],
            "colour",
        ),
        (
            vec![("USER_SERVICE__AUTH__JWKS_MIN_REFRESH_INTERVAL", "0s".into())],
            "auth.jwks_min_refresh_interval",
        ),
        (
            vec![
                (
                    "USER_SERVICE__STORE__URL",
                    "postgres://app:pw-in-env@db/users".into(),
                ),
                ("USER_SERVICE__STORE__URL_FILE", short.display().to_string()),
            ],
            "not both",
        ),
        (
            vec![("USER_SERVICE__STORE__URL_FILE", short.display().to_string())],
            "store.url_file",
        ),
    ];
    for (env, expected) in cases {
        let mut command = bin();
        command.arg("--print-config");
        for (key, value) in &env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        for secret in ["tooshort-but-secret", SECRET, "pw-in-env"] {
            assert!(!stderr.contains(secret), "{stderr}");
        }
    }
}

#[test]
fn print_config_shows_no_secret_from_values_or_files() {
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("db-url");
    std::fs::write(
        &url_file,
        "postgres://app:db-password-from-file@db:5432/users\n",
    )
    .unwrap();
    let output = bin()
        .arg("--print-config")
        .env("USER_SERVICE__AUTH__ENABLED", "true")
        .env("USER_SERVICE__AUTH__JWT_SECRET", SECRET)
        .env("USER_SERVICE__STORE__URL_FILE", &url_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("jwt_secret = \"***\""), "{stdout}");
    assert!(
        stdout.contains("postgres://app:***@db:5432/users"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(SECRET) && !stdout.contains("db-password-from-file"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_real_process_logs_none_of_the_secrets_tokens_or_passwords() {
    const DB_PASSWORD: &str = "db-password-3f9c1e";
    const USER_PASSWORD: &str = "user-password-8d2a7b";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    // A database that is not there: the store's errors get logged too.
    let db = unused_addr();
    let url_file = dir.path().join("db-url");
    std::fs::write(
        &url_file,
        format!(
            "postgres://app:{DB_PASSWORD}@{}/users?password={DB_PASSWORD}",
            db.addr
        ),
    )
    .unwrap();
    let secret_path = secret_file.display().to_string();
    let url_path = url_file.display().to_string();
    // Not waiting for readiness: it waits for the database, which never
    // comes. The `serving` line says the gRPC port is up.
    let mut child = start_child(&[
        ("USER_SERVICE__AUTH__ENABLED", "true"),
        ("USER_SERVICE__AUTH__JWT_SECRET_FILE", &secret_path),
        ("USER_SERVICE__AUTH__ISSUER", ISSUER),
        ("USER_SERVICE__AUTH__AUDIENCE", AUDIENCE),
        ("USER_SERVICE__STORE__URL_FILE", &url_path),
        ("USER_SERVICE__STORE__MIGRATE", "false"),
        ("USER_SERVICE__STORE__ACQUIRE_TIMEOUT", "200ms"),
        ("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "100ms"),
        ("RUST_LOG", "trace"),
    ])
    .await;
    let channel = connect(child.grpc_addr).await;

    let me = uuid::Uuid::now_v7().to_string();
    let user = hs(&claims(&me, &[]));
    let admin_token = hs(&claims("ops", &["admin"]));
    let mut expired = claims(&me, &[]);
    expired["exp"] = json!(now() - 3600);
    let expired = hs(&expired);
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"forged-secret-0123456789abcdefghijkl"),
        None,
        &claims(&me, &["admin"]),
    );
    let mut users = UserServiceClient::new(channel.clone());
    let _ = users
        .create_user(with_token(
            CreateUserRequest {
                email: "secret-logs@example.com".into(),
                name: "Logs".into(),
                password: USER_PASSWORD.into(),
            },
            Some(&user),
        ))
        .await;
    for token in [&user, &admin_token, &expired, &forged] {
        for method in [
            Method::GetUser,
            Method::UpdateUserName,
            Method::ListUsers,
            Method::BulkCreateUsers,
        ] {
            let _ = call(&channel, method, Some(token), &me).await;
        }
    }
    let _ = call(&channel, Method::HealthCheck, Some(&user), "").await;
    drop(users);
    drop(channel);

    child.terminate(Duration::from_secs(30)).await;
    let logs = child.output();
    // The capture is real: calls and refusals were logged.
    assert!(logs.contains("finished call"), "{logs}");
    assert!(
        logs.contains("Unauthenticated") || logs.contains("UNAUTHENTICATED"),
        "{logs}"
    );
    for (what, secret) in [
        ("JWT secret", SECRET),
        ("database password", DB_PASSWORD),
        ("user password", USER_PASSWORD),
        ("user token", user.as_str()),
        ("admin token", admin_token.as_str()),
        ("expired token", expired.as_str()),
        ("forged token", forged.as_str()),
    ] {
        assert!(!logs.contains(secret), "the logs contain the {what}");
        // Not even a token's signature part.
        if let Some((_, signature)) = secret.rsplit_once('.') {
            assert!(
                !logs.contains(signature),
                "the logs contain the {what}'s signature"
            );
        }
    }
}

#[tokio::test]
async fn a_provider_down_at_startup_does_not_block_and_its_keys_are_used_once_it_answers() {
    let provider = JwksServer::start(String::new()).await;
    provider.set(503, "starting".into());
    let mut settings = auth_settings();
    settings.auth.jwks_url = Some(provider.url.clone());
    settings.auth.jwks_min_refresh_interval = Duration::from_millis(200);
    settings.auth.jwks_refresh_interval = Duration::from_secs(3600);
    let app = spawn_app_with(settings).await;
    let me = sign_up(&app.channel, "late-idp").await;
    let token = sign(
        Algorithm::RS256,
        &rsa_key("rsa-a.key.pem"),
        Some("k1"),
        &claims(&me, &[]),
    );
    assert_eq!(
        call(&app.channel, Method::GetUser, Some(&token), &me).await,
        Code::Unauthenticated
    );
    provider.set(200, jwks(&[("k1", "rsa-a.key.pem")]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        call(&app.channel, Method::GetUser, Some(&token), &me).await,
        Code::Ok
    );
    app.stop().await;
}

#[tokio::test]
async fn the_client_library_and_userctl_send_the_token_on_every_call() {
    use user_service_client::{ClientConfig, ClientError, Token, UserClient};
    let app = spawn_app_with(hs_settings()).await;
    let me = sign_up(&app.channel, "client").await;
    let endpoint = format!("http://{}", app.grpc_addr);
    let admin = UserClient::connect(ClientConfig {
        endpoint: endpoint.clone(),
        token: Some(Token::new(hs(&claims("ops", &["admin"])))),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(admin.get_user(&me).await.unwrap().id, me);
    let mut users = admin
        .list_users(0, "", Duration::from_secs(10))
        .await
        .unwrap();
    use futures_util::StreamExt;
    assert!(users.next().await.unwrap().is_ok());
    let watch = admin
        .watch_users(vec![], Some(Duration::from_millis(200)))
        .await;
    assert!(watch.is_ok());
    let anonymous = UserClient::connect(ClientConfig {
        endpoint: endpoint.clone(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    assert!(matches!(
        anonymous.get_user(&me).await,
        Err(ClientError::Unauthenticated(_))
    ));
    let user = UserClient::connect(ClientConfig {
        endpoint: endpoint.clone(),
        token: Some(Token::new(hs(&claims(&me, &[])))),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    assert!(matches!(
        user.delete_user(&me).await,
        Err(ClientError::PermissionDenied(_))
    ));

    let userctl = |token: Option<String>, args: &[&str]| {
        let mut command = tokio::process::Command::new(crate::helpers::userctl());
        command
            .arg("--addr")
            .arg(&endpoint)
            .args(args)
            .env_remove("USERCTL_TOKEN");
        if let Some(token) = token {
            command.env("USERCTL_TOKEN", token);
        }
        command.output()
    };
    let out = userctl(Some(hs(&claims(&me, &[]))), &["get", &me])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&me));
    let out = userctl(None, &["get", &me]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    // --token works as well as the environment variable.
    let admin_token = hs(&claims("ops", &["admin"]));
    let out = userctl(None, &["--token", &admin_token, "list"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&me));
    app.stop().await;
}

#[tokio::test]
async fn grpcurl_calls_with_the_readme_header_and_reflection_stays_public() {
    let app = spawn_app_with(hs_settings()).await;
    let me = sign_up(&app.channel, "grpcurl").await;
    let addr = app.grpc_addr.to_string();
    let grpcurl = |args: Vec<String>| async move {
        match tokio::process::Command::new("grpcurl")
            .args(&args)
            .output()
            .await
        {
            Ok(output) => output,
            Err(err) => panic!(
                "cannot run grpcurl ({err}); run the suite with `make test`, which installs it"
            ),
        }
    };
    let body = format!("{{\"user_id\":\"{me}\"}}");
    let header = format!("authorization: Bearer {}", hs(&claims(&me, &[])));
    let with = grpcurl(vec![
        "-plaintext".into(),
        "-H".into(),
        header,
        "-d".into(),
        body.clone(),
        addr.clone(),
        "user.v1.UserService/GetUser".into(),
    ])
    .await;
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains(&me));
    let without = grpcurl(vec![
        "-plaintext".into(),
        "-d".into(),
        body,
        addr.clone(),
        "user.v1.UserService/GetUser".into(),
    ])
    .await;
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    // Reflection needs no token, so `grpcurl list` works as before.
    let list = grpcurl(vec!["-plaintext".into(), addr, "list".into()]).await;
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    app.stop().await;
}
